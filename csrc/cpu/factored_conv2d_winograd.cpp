// Winograd F(2x2, 3x3) path of the CPU factored_conv2d, channel scheme with a 3 x 3, stride-1,
// dilation-1 first conv (the 3 x 3 layers of ResNets).
//
// The first conv is most of a factored conv's work. Winograd's minimal filtering computes a
// 2 x 2 block of its outputs ("a tile") from a 4 x 4 input patch with 16 multiplications per
// (rank, channel) pair instead of 36: V = B^T d B per channel, U = G g G^T per filter, then
// M = sum_c U (.) V, which for each of the 16 points is a (rank x channels) by (channels x
// tiles) matrix product, run by the direct kernel's micro-kernel (tap_conv with one tap per
// channel), and Y = A^T M A. The tiles' rank-row outputs are the intermediate; the 1 x 1 second
// conv, bias and ReLU run on it at once, as in the direct path, and only then does anything go
// to memory. Rounding: F(2x2, 3x3) adds and halves exactly representable coefficients, so its
// error stays within a few times that of a direct sum (tests hold it to the direct path's
// tolerance). Non-finite input stays local (an output is non-finite exactly when the direct
// conv's is), but Inf - Inf inside the transforms can make it NaN instead of +-Inf.
//
// A work item is one image's band of tile rows, or a few whole images when they are small.
// The transform reads NCHW input rows where they are, their padding by masked loads; other
// layouts are first laid out as zero-padded planes (as in the direct path). Either way it runs
// vectorised over the tiles of a row. Items run in parallel.
#include "cpu/factored_conv2d_winograd.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu/factored_conv2d_shared.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

constexpr int64_t kPoints = 16;  // 4 x 4 transformed points per tile
// At most this many tiles per work item (more when one tile row has more), and at most
// kWinogradProductBytes of products. 256 rather than 128 lets a 56 x 56 batch-1 image split
// into 4 items for 2 threads instead of 7 (in-process A/B: 1.06x on 64-64 56x56 r16 b1; the
// other bench layers unchanged).
constexpr int64_t kMaxItemTiles = 256;
// Below these, the transforms cost more than the multiplications they save. Measured on the
// 2-core AVX2 EPYC against the direct kernel (in-process alternation): rank 6 and 10 (CIFAR 16
// and 32 channels) ran at 0.81-0.85x at batch 32; rank 16 at 0.88-1.00x with 49-98 tiles and
// 1.01-1.16x with 128-192. From rank 32 on, the products a tile saves (rank x channels) pay for
// its input transform (channels) from fewer tiles: with per-thread weights
// (kPrivateWeightBytes), 49-98 tiles ran at 0.98-1.29x (median ~1.1) at ranks 32-128, and 25-36
// tiles (10 x 10 and 12 x 12 images at batch 1) at 0.70-0.83x.
constexpr int64_t kMinRank = 16;
constexpr int64_t kMinChannels = 32;
constexpr int64_t kMinTiles = 128;
constexpr int64_t kMinRankForFewerTiles = 32;
constexpr int64_t kMinFewerTiles = 48;
// With 512-bit multiply-add loops (cpu_kernels().vector_bits; the transforms stay 256-bit) the
// direct kernel's products run at twice the rate and Winograd saves less. In-process A/B on a
// 2-core Intel Xeon (direct / Winograd time): rank 16 at 0.93-0.95x (64-64 56x56, batch 1 and
// 32), rank 64 with 49 tiles (256-256 14x14 batch 1) 0.72x, rank 20 with 512 tiles 1.06x;
// from rank 32 with 196 or more tiles 0.97-1.31x (1.12-1.31x at batch 32).
constexpr int64_t kMinRankWide = 32;
constexpr int64_t kMinTilesWide = 128;

// The weight transform runs in parallel over runs of kFilterRun filters (a multiple of every
// vector width), at least kFilterGrain filters a thread.
constexpr int64_t kFilterRun = 16;
constexpr int64_t kFilterGrain = 1024;

// Each thread that runs items transforms the weights itself, into its own buffer, where all
// the threads' copies together take at most this: every item reads all of U, and a U shared
// by the threads was written by both cores and read by both on every call. In-process A/B on
// the 2-core EPYC, own copies against one shared U: 1.00-1.13x on 128-128 14x14 r32 b1, 64-64
// 56x56 r16 b1, 64-64 8x8 r20 b32 and 512-512 7x7 r128 b32 (1.02-1.06x, 8.4 MB of copies),
// never slower; in some processes the shared U made 128-128 14x14 r32 b1 1.66x slower (0.196
// against 0.118 ms). The copies cost a thread's transform of all filters instead of its
// share, and memory.
constexpr int64_t kPrivateWeightBytes = 16 << 20;
std::atomic<int64_t> g_private_weight_calls{0};

// A work item: `images` whole images, or one image's band of `rows` tile rows.
struct Plan {
  int64_t tiles_h = 0, tiles_w = 0;
  int64_t images = 1;  // images per item (> 1 only with whole images: rows == tiles_h)
  int64_t rows = 0;    // tile rows per band
  int64_t bands = 0;   // per image
  int64_t items = 0;
  int64_t count = 0;   // tile positions of an item, rounded up to kCountAlign
  int64_t group = 0;   // input channels per group
  PlaneSpec planes;    // the zero-padded input rows of a band, for one group
  int64_t v_channel = 0, v_point = 0;  // strides of the transformed input
  int64_t m_point = 0;                 // point stride of the products
  int64_t pitch = 0;      // intermediate and output positions per image row
  int64_t positions = 0;  // row stride of the intermediate: 2 image rows per tile row
  RowBlocks rank_blocks, out_blocks;  // register blocks of both convs' output rows
};

template <typename T>
Plan make_plan(const FconvGeometry& g) {
  constexpr int64_t L = vector_width<T>();
  Plan p;
  p.tiles_h = ceil_div(g.out_h, 2);
  p.tiles_w = ceil_div(g.out_w, 2);
  // The products of an item (16 points x rank x tiles) are read and written once per channel
  // group: they must stay in L2.
  const int64_t max_tiles = std::clamp<int64_t>(
      kWinogradProductBytes / (kPoints * g.rank * static_cast<int64_t>(sizeof(T))), kCountAlign,
      kMaxItemTiles);
  const WinogradItems items =
      choose_winograd_items(p.tiles_h, p.tiles_w, g.batch, at::get_num_threads(), max_tiles);
  p.images = items.images;
  p.rows = items.rows;
  p.bands = items.bands;
  p.items = items.items;
  p.count = round_up(p.images * p.rows * p.tiles_w, kCountAlign);
  // The transform writes up to L - 1 values past an item's last tile.
  p.v_channel = p.count + L;
  const int64_t group_bytes = kPoints * p.v_channel * static_cast<int64_t>(sizeof(T));
  p.group = std::clamp<int64_t>(kWinogradGroupBytes / group_bytes, 1, g.in_channels);
  // Point strides padded by a cache line: at a power-of-two stride the 16 points' streams would
  // share one set of the L1 cache.
  p.v_point = p.group * p.v_channel + 16;
  p.m_point = g.rank * p.count + 16;
  // The intermediate's rows are the output's: at an odd width the last tile column's second
  // value lands on the next row's first, which the output transform writes after it.
  p.pitch = g.out_w;
  // The output transform writes up to 2 L - 1 values past an item's last row.
  p.positions = round_up(p.images * 2 * p.rows * p.pitch, kCountAlign) + 2 * L;
  PlaneSpec& s = p.planes;
  s.channels = p.group;
  s.ph = g.ph;
  s.pw = g.pw;
  s.hb = 2 * p.rows + 3;  // 2 rows + 2 per tile row, + 1: see PlaneSpec
  s.wq = round_up(2 * L * ceil_div(p.tiles_w, L) + 2, L);
  // use_winograd's width limit keeps this within the input transform's row buffer.
  TORCH_INTERNAL_ASSERT(s.wq <= kWinogradMaxPlaneWidth, "Winograd plane row too wide: ", s.wq);
  p.rank_blocks = row_blocks(g.rank);
  p.out_blocks = row_blocks(g.out_channels);
  return p;
}

template <typename T>
struct Scratch {
  T* planes;  // group channels of planes
  T* v;       // 16 points x group x v_channel
  T* m;       // 16 points x rank x count
  T* mid;     // rank x positions: the intermediate, in image order
  T* out;     // kMaxRows x positions
  T* u;       // the thread's own transformed weights, where private (see winograd_factored_conv2d)
};

// thread_buffers, as the direct path's; the planes, where the input needs them (not NCHW rows,
// see run_item), are zeroed once per call (build_planes writes their data columns only, so the
// padding stays zero for every band).
template <typename T>
Scratch<T> thread_scratch(const Plan& p, const FconvGeometry& g, int64_t private_u,
                          bool planes) {
  const auto parts = thread_buffers<T, 6>(
      {planes ? p.planes.size() + vector_width<T>() : 0, kPoints * p.v_point,
       kPoints * p.m_point, g.rank * p.positions, kMaxRows * p.positions, private_u});
  std::fill(parts[0], parts[1], T(0));
  return {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]};
}

template <typename T>
struct Operands {
  const T* x;
  const int64_t* xs;
  const T* u;  // 16 points x rank x channels, points u_point apart
  int64_t u_point;
  const T* w2;
  const T* bias;
  const T* residual;  // null: none
  const int64_t* rs;
  T* out;
  const int64_t* os;
  const int64_t* v_offsets;    // tap t of a point product: channel t of the group
  const int64_t* mid_offsets;  // tap j of the second conv: rank row j of the intermediate
  // The output is NCHW and a residual, if any, has its rows: the intermediate's rows, which
  // are the output's, go straight into the output.
  bool direct;
  bool input_rows;  // the input's rows are consecutive values (NCHW): read where they are
};

template <typename T>
void run_item(const FconvGeometry& g, const Plan& p, const Operands<T>& ops, int64_t item,
              const Scratch<T>& s) {
  const KernelSet<T>& k = kernels_for<T>();
  const int64_t rank = g.rank, channels = g.in_channels;
  const int64_t image0 = item / p.bands * p.images;
  const int64_t images = std::min(p.images, g.batch - image0);
  const int64_t ty0 = item % p.bands * p.rows;
  const int64_t rows = std::min(p.rows, p.tiles_h - ty0);
  const int64_t image_tiles = rows * p.tiles_w;  // an image's tiles in this item
  // and its positions: the output rows only. At an odd height the tiles' last row (past the
  // output) lands on the next image's first, which the output transform writes after it, or
  // in the slack.
  const int64_t out_rows = std::min(2 * rows, g.out_h - 2 * ty0);
  const int64_t image_positions = out_rows * p.pitch;
  const int64_t positions = round_up(images * image_positions, kCountAlign);
  const int64_t count = round_up(images * image_tiles, kCountAlign);  // a last item may be short
  // First conv: per channel group, each image's planes and their transform, then the 16 point
  // products over the item's tiles, accumulated over the groups.
  for (int64_t c0 = 0; c0 < channels; c0 += p.group) {
    PlaneSpec spec = p.planes;
    spec.channels = std::min(p.group, channels - c0);
    for (int64_t i = 0; i < images; ++i) {  // in order: a transform's spill lands on the next
      const T* image = ops.x + (image0 + i) * ops.xs[0] + c0 * ops.xs[1];
      T* v = s.v + i * image_tiles;
      if (ops.input_rows) {
        k.winograd_input_direct(image, ops.xs[1], ops.xs[2], g.height, 2 * ty0 - g.ph, g.pw,
                                g.width, spec.wq, spec.channels, rows, p.tiles_w, v,
                                p.v_channel, p.v_point);
      } else {
        k.build_planes(image, ops.xs[1], ops.xs[2], ops.xs[3], g.height, g.width, spec, 2 * ty0,
                       s.planes);
        k.winograd_input(s.planes, spec.plane_size(), spec.wq, spec.channels, rows, p.tiles_w, v,
                         p.v_channel, p.v_point);
      }
    }
    for (int64_t xi = 0; xi < kPoints; ++xi) {
      for (const auto& [start, size] : p.rank_blocks) {
        k.tap_conv(s.v + xi * p.v_point, ops.v_offsets, spec.channels,
                   ops.u + xi * ops.u_point + start * channels + c0, channels, size, nullptr,
                   c0 > 0, false, s.m + xi * p.m_point + start * p.count, p.count, count,
                   nullptr, 0);
      }
    }
  }
  for (int64_t i = 0; i < images; ++i) {  // in order: a transform's spill lands on the next
    k.winograd_output(s.m + i * image_tiles, rank, p.count, p.m_point, rows, p.tiles_w,
                      s.mid + i * image_positions, p.pitch, p.positions);
  }
  // Second conv with the epilogue over the item's positions, then the valid rows and columns
  // out to memory; or, where the output's rows are laid out as the intermediate's, per image
  // straight into the output.
  if (ops.direct && image_positions >= kPositionAlign) {
    for (const auto& [start, size] : p.out_blocks) {
      for (int64_t i = 0; i < images; ++i) {
        const T* res = ops.residual ? ops.residual + (image0 + i) * ops.rs[0] +
                                          start * ops.rs[1] + 2 * ty0 * ops.rs[2]
                                    : nullptr;
        conv1x1_into_rows(k, s.mid + i * image_positions, ops.mid_offsets, rank,
                          ops.w2 + start * rank, size, ops.bias ? ops.bias + start : nullptr,
                          g.relu, res, ops.rs[1],
                          ops.out + (image0 + i) * ops.os[0] + start * ops.os[1] +
                              2 * ty0 * ops.os[2],
                          ops.os[1], image_positions, s.out, p.positions);
      }
    }
    return;
  }
  const bool residual = ops.residual != nullptr;  // then the ReLU follows its addition
  for (const auto& [start, size] : p.out_blocks) {
    k.tap_conv(s.mid, ops.mid_offsets, rank, ops.w2 + start * rank, rank, size,
               ops.bias ? ops.bias + start : nullptr, false, g.relu && !residual, s.out,
               p.positions, positions, nullptr, 0);
    copy_out_rows(k, s.out, p.positions, image_positions, p.pitch, images, out_rows, g.out_w,
                  image0, start, size, 2 * ty0, ops.residual, ops.rs, g.relu, ops.out, ops.os);
  }
}

}  // namespace

WinogradItems choose_winograd_items(int64_t tile_rows, int64_t row_tiles, int64_t batch,
                                    int64_t threads, int64_t max_tiles) {
  WinogradItems best;
  double best_cost = -1.0;
  auto consider = [&](int64_t images, int64_t rows) {
    const int64_t bands = ceil_div(tile_rows, rows);
    const int64_t items = ceil_div(batch, images) * bands;
    const double cost = static_cast<double>(ceil_div(items, threads) *
                                            round_up(images * rows * row_tiles, kCountAlign));
    if (best_cost < 0.0 || cost <= best_cost) {
      best_cost = cost;
      best.images = images;
      best.rows = rows;
    }
  };
  for (int64_t rows = 1; rows <= tile_rows; ++rows) {
    if (rows > 1 && rows * row_tiles > max_tiles) break;
    consider(1, rows);
  }
  const int64_t per_image = tile_rows * row_tiles;
  for (int64_t images = 2; images <= batch && images * per_image <= max_tiles; ++images) {
    consider(images, tile_rows);
  }
  best.bands = ceil_div(tile_rows, best.rows);
  best.items = ceil_div(batch, best.images) * best.bands;
  return best;
}

bool winograd_private_weights(int64_t busy_threads, int64_t weight_bytes) {
  const bool copies = busy_threads > 1 && busy_threads * weight_bytes <= kPrivateWeightBytes;
  if (copies) g_private_weight_calls.fetch_add(1, std::memory_order_relaxed);
  return copies;
}

bool use_winograd(const FconvGeometry& g) {
  const PathMode mode = winograd_switch().get();
  if (mode == PathMode::kNever) return false;
  const bool three_by_three = g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 &&
                              g.dw == 1 && g.in_channels > 0 && g.rank > 0;
  if (!three_by_three) return false;
  if (g.spatial) return mode == PathMode::kAlways || spatial_winograd_pays(g);
  if (g.out_w + 32 > kWinogradMaxPlaneWidth) return false;  // the transform's row buffer
  const int64_t tiles = g.batch * ceil_div(g.out_h, 2) * ceil_div(g.out_w, 2);
  if (mode == PathMode::kAlways) return true;
  if (g.in_channels < kMinChannels) return false;
  if (cpu_kernels().vector_bits >= 512) return g.rank >= kMinRankWide && tiles >= kMinTilesWide;
  const int64_t min_tiles = g.rank >= kMinRankForFewerTiles ? kMinFewerTiles : kMinTiles;
  return g.rank >= kMinRank && tiles >= min_tiles;
}

template <typename T>
void winograd_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs,
                              const T* w1, const T* w2, const T* bias, const T* residual,
                              const int64_t* rs, T* out, const int64_t* os) {
  const Plan p = make_plan<T>(g);
  // Point stride padded by 16 values (a cache line of floats), as v's and m's: at the
  // power-of-two strides of most layers (rank x channels) the 16 points' streams written by
  // winograd_weights shared one set of the L1 cache, and the transform took ~12% of a batch-1
  // call (128-128 28x28 r32).
  const int64_t filters = g.rank * g.in_channels;
  const int64_t u_point = filters + 16;
  const int64_t u_size = kPoints * u_point;
  const auto transform = kernels_for<T>().winograd_weights;
  std::vector<int64_t> v_offsets(p.group), mid_offsets(g.rank);
  for (int64_t t = 0; t < p.group; ++t) v_offsets[t] = t * p.v_channel;
  for (int64_t j = 0; j < g.rank; ++j) mid_offsets[j] = j * p.positions;
  const bool direct = rows_like_nchw(g.out_w, os, residual != nullptr, rs);
  const bool input_rows = xs[3] == 1;
  const int64_t work = p.count * (kPoints * g.rank * g.in_channels + 4 * g.out_channels * g.rank);
  const int64_t grain = parallel_grain(work);
  const int64_t busy_threads =
      std::min<int64_t>(at::get_num_threads(), ceil_div(p.items, grain));
  const bool private_weights =
      winograd_private_weights(busy_threads, u_size * static_cast<int64_t>(sizeof(T)));
  T* shared_u = nullptr;
  std::vector<T> own;  // where U goes past kRetainedCallBytes
  if (!private_weights) {
    // winograd_weights writes every value the products read (not the points' padding).
    shared_u = call_buffer<T>(u_size, &own);
    // U[xi][j][c] = (G g G^T)[xi] for filter g = w1[j, c]: filter j * channels + c.
    // In parallel over filters, in runs of whole vectors (kFilterGrain: where fewer, one thread).
    at::parallel_for(0, ceil_div(filters, kFilterRun), kFilterGrain / kFilterRun,
                     [&](int64_t begin, int64_t end) {
                       const int64_t f0 = begin * kFilterRun;
                       const int64_t f1 = std::min(end * kFilterRun, filters);
                       transform(w1 + f0 * 9, f1 - f0, shared_u + f0, u_point);
                     });
  }
  at::parallel_for(0, p.items, grain, [&](int64_t begin, int64_t end) {
    const Scratch<T> scratch = thread_scratch<T>(p, g, private_weights ? u_size : 0, !input_rows);
    Operands<T> ops{x,  xs, shared_u, u_point, w2, bias, residual, rs, out, os,
                    v_offsets.data(), mid_offsets.data(), direct, input_rows};
    if (private_weights) {
      transform(w1, filters, scratch.u, u_point);
      ops.u = scratch.u;
    }
    for (int64_t item = begin; item < end; ++item) run_item(g, p, ops, item, scratch);
  });
}

int64_t winograd_private_weight_calls() { return g_private_weight_calls.load(); }

template void winograd_factored_conv2d<float>(const FconvGeometry&, const float*,
                                              const int64_t*, const float*, const float*,
                                              const float*, const float*, const int64_t*,
                                              float*, const int64_t*);
template void winograd_factored_conv2d<double>(const FconvGeometry&, const double*,
                                               const int64_t*, const double*, const double*,
                                               const double*, const double*, const int64_t*,
                                               double*, const int64_t*);

}  // namespace fconv_cpu
}  // namespace trp_ext
