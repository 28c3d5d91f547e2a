// Winograd F(2, 3) along each axis: the spatial scheme's 3 x 1 first conv (c -> r) down the
// columns and its 1 x 3 second conv (r -> n) along the rows, both at stride 1 and dilation 1
// (the 3 x 3 stride-1 layers of ResNets, factored by the spatial scheme).
//
// Each conv computes two outputs along its axis from four inputs with 4 multiplications per
// (output, input) channel pair instead of 6: V = B^T d per input channel, U = G g per filter,
// then for each of the 4 points a (out channels x in channels) by (in channels x tiles) matrix
// product (the direct kernel's micro-kernel, one tap per channel), and Y = A^T M. Both convs do
// 2/3 of the direct path's multiply-adds (less at odd sizes, whose last tile computes one
// output in vain). Rounding: the transforms add and halve exactly representable coefficients,
// as the 2-D path's (factored_conv2d_winograd.cpp). Non-finite input stays local, but Inf - Inf
// inside the transforms can make an output NaN instead of +-Inf.
//
// A work item is one image's band of tile rows of the first conv, or a few whole images. Its
// first conv runs a group of input channels at a time, reading rows of consecutive values where
// they are (other layouts through zero-padded planes, as in the direct path), into the
// intermediate, which is laid out with the second conv's zero padding around each row; the
// second conv then runs a few output channels at a time, its output transform adding the bias
// (and a residual) and applying the ReLU as it writes NCHW outputs (other layouts through a row
// buffer and the copy-out). Nothing of the intermediate reaches memory. Items run in parallel.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/factored_conv2d_shared.h"
#include "cpu/factored_conv2d_winograd.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

constexpr int64_t kPoints = 4;  // transformed points per tile
// An item's first-conv products (4 points x rank x positions) are kept near
// kWinogradProductBytes, with at most kMaxItemPositions positions, and a channel group's
// transformed input (4 points x channels x positions) near kWinogradGroupBytes (see there).
constexpr int64_t kMaxItemPositions = 1024;
// kAuto's rule (spatial_winograd_pays). In-process A/B against the direct path on the 2-core
// EPYC: ranks 6 and 10 (the bench's CIFAR 16- and 32-channel layers) ran at 0.68-1.08x; from
// rank 32, 1.09-1.28x from 392 first-conv positions (28x28 at batch 1, every larger call),
// but 0.99x on a batch-1 14x14 image (98 positions) and 0.84-0.92x on 7x7 (28): each thread's
// transform of all the weights outweighs the multiplications saved on a few positions. Ranks
// 16-24 gain less per position: 1.05-1.19x from 1024 positions (8x8 at batch 32, 56x56 at
// batch 1-8), 0.89x on 128-channel 28x28 at batch 1 (392).
constexpr int64_t kMinRank = 16;
constexpr int64_t kMinChannels = 32;
constexpr int64_t kMinPositions = 128;
constexpr int64_t kMinRankForFewerPositions = 32;  // below it, kMinPositionsAtLowRank
constexpr int64_t kMinPositionsAtLowRank = 1024;
// With 512-bit multiply-add loops (see factored_conv2d_winograd.cpp's kMinRankWide): ranks 16-24
// lost (0.75-0.82x at 1024-25088 positions, in-process A/B on a 2-core Intel Xeon); from rank 32,
// 0.97-1.34x from 98 positions, 0.80x on 7x7 at batch 1 (28).
constexpr int64_t kMinRankWide = 32;

struct Plan {
  int64_t tiles_h = 0;  // first-conv tile rows (2 intermediate rows each)
  int64_t tiles_w = 0;  // second-conv tiles of an output row (2 outputs each)
  WinogradItems items;  // first-conv tiles: tile rows of `width` positions
  int64_t count1 = 0;   // first-conv positions of an item, rounded up to kCountAlign
  int64_t group = 0;    // input channels per group
  PlaneSpec planes;     // a band's zero-padded input rows, for one group
  int64_t v1_channel = 0, v1_point = 0, m1_point = 0;
  // The intermediate: per rank row, per image, 2 rows per tile row of mid_pitch values: pw
  // zeros, the row, pw + 1 zeros (the second conv's padding; the last tile may read one more).
  int64_t mid_pitch = 0, mid_image = 0, mid_channel = 0;
  int64_t count2 = 0;  // second-conv tiles of a full item, rounded up to kCountAlign
  int64_t v2_channel = 0, v2_point = 0, m2_ld = 0, m2_point = 0;
  int64_t row_ld = 0;  // an output channel's rows of an item in the row buffer (not direct)
  RowBlocks rank_blocks, out_blocks;
};

template <typename T>
Plan make_plan(const FconvGeometry& g) {
  constexpr int64_t L = vector_width<T>();
  constexpr int64_t size = static_cast<int64_t>(sizeof(T));
  Plan p;
  p.tiles_h = ceil_div(g.out_h, 2);
  p.tiles_w = ceil_div(g.out_w, 2);
  const int64_t max_positions = std::clamp<int64_t>(
      kWinogradProductBytes / (kPoints * g.rank * size), kCountAlign, kMaxItemPositions);
  p.items = choose_winograd_items(p.tiles_h, g.width, g.batch, at::get_num_threads(),
                                  max_positions);
  const int64_t images = p.items.images, rows = p.items.rows;
  p.count1 = round_up(images * rows * g.width, kCountAlign);
  p.v1_channel = p.count1 + L;  // the input transform writes up to L - 1 values past
  p.group = std::clamp<int64_t>(kWinogradGroupBytes / (kPoints * p.v1_channel * size), 1,
                                g.in_channels);
  // Point strides padded by a cache line (see the 2-D path), which also covers the output
  // transform's reads past the last tile row.
  p.v1_point = p.group * p.v1_channel + 16;
  p.m1_point = g.rank * p.count1 + 16;
  p.mid_pitch = g.width + 2 * g.pw + 1;
  p.mid_image = 2 * rows * p.mid_pitch;
  // The width transform reads up to 2 L + 1 values past a row's last tile.
  p.mid_channel = round_up(images * p.mid_image + 2 * L + 2, 16);
  p.count2 = round_up(images * 2 * rows * p.tiles_w, kCountAlign);
  p.v2_channel = p.count2 + L;
  p.v2_point = g.rank * p.v2_channel + 16;
  p.m2_ld = p.count2 + L;  // the width output transform reads up to L - 1 tiles past
  p.m2_point = kMaxRows * p.m2_ld + 16;
  p.row_ld = images * 2 * rows * g.out_w;
  PlaneSpec& s = p.planes;
  s.channels = p.group;
  s.ph = g.ph;
  s.hb = 2 * rows + 3;  // 2 rows + 2 per tile row, + 1: see PlaneSpec
  s.wq = g.width;       // the 3 x 1 conv pads the height only
  p.rank_blocks = row_blocks(g.rank);
  p.out_blocks = row_blocks(g.out_channels);
  return p;
}

template <typename T>
struct Scratch {
  T* planes;  // group channels of planes
  T* v1;      // 4 points x group x v1_channel
  T* m1;      // 4 points x rank x count1
  T* mid;     // rank x mid_channel
  T* v2;      // 4 points x rank x v2_channel
  T* m2;      // 4 points x kMaxRows x m2_ld
  T* rows;    // kMaxRows x row_ld
  T* u;       // the thread's own transformed weights, where private
};

// thread_buffers, as the direct path's. The planes (where the input needs them: not NCHW rows)
// and the intermediate are zeroed once per call: the transforms write their data only, so the
// padding stays zero for every item.
template <typename T>
Scratch<T> thread_scratch(const Plan& p, const FconvGeometry& g, int64_t private_u,
                          bool planes) {
  const auto parts = thread_buffers<T, 8>(
      {planes ? p.planes.size() + vector_width<T>() : 0, kPoints * p.v1_point,
       kPoints * p.m1_point,
       g.rank * p.mid_channel, kPoints * p.v2_point, kPoints * p.m2_point,
       kMaxRows * p.row_ld, private_u});
  std::fill(parts[0], parts[1], T(0));
  std::fill(parts[3], parts[4], T(0));
  return {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], parts[7]};
}

// The transformed weights: the first conv's U1 (4 points x rank x channels) then the second's
// U2 (4 points x out channels x rank), each point padded by a cache line.
struct WeightLayout {
  int64_t u1_point, u2_point, size;
};
WeightLayout weight_layout(const FconvGeometry& g) {
  const int64_t u1_point = g.rank * g.in_channels + 16;
  const int64_t u2_point = g.out_channels * g.rank + 16;
  return {u1_point, u2_point, kPoints * (u1_point + u2_point)};
}

template <typename T>
void transform_weights(const FconvGeometry& g, const WeightLayout& layout, const T* w1,
                       const T* w2, T* u) {
  const auto transform = kernels_for<T>().winograd_axis_weights;
  transform(w1, g.rank * g.in_channels, u, layout.u1_point);
  transform(w2, g.out_channels * g.rank, u + kPoints * layout.u1_point, layout.u2_point);
}

template <typename T>
struct Operands {
  const T* x;
  const int64_t* xs;
  const T* x_end;  // past x's last value
  const T* u1;  // see WeightLayout
  const T* u2;
  WeightLayout layout;
  const T* bias;
  const T* residual;  // null: none
  const int64_t* rs;
  T* out;
  const int64_t* os;
  const int64_t* v1_offsets;  // tap t of a first-conv point product: channel t of the group
  const int64_t* v2_offsets;  // tap j of a second-conv point product: rank row j
  // The output is NCHW and a residual, if any, has its rows: the second conv's rows go
  // straight into the output.
  bool direct;
  bool input_rows;  // the input's rows are consecutive values (NCHW): read where they are
};

template <typename T>
void run_item(const FconvGeometry& g, const Plan& p, const Operands<T>& ops, int64_t item,
              const Scratch<T>& s) {
  const KernelSet<T>& k = kernels_for<T>();
  const int64_t rank = g.rank, channels = g.in_channels, width = g.width;
  const int64_t image0 = item / p.items.bands * p.items.images;
  const int64_t images = std::min(p.items.images, g.batch - image0);
  const int64_t ty0 = item % p.items.bands * p.items.rows;
  const int64_t rows = std::min(p.items.rows, p.tiles_h - ty0);
  const int64_t image_positions = rows * width;  // an image's first-conv positions here
  const int64_t count1 = round_up(images * image_positions, kCountAlign);
  // First conv: per channel group, each image's planes and their transform, then the 4 point
  // products over the item's positions, accumulated over the groups.
  for (int64_t c0 = 0; c0 < channels; c0 += p.group) {
    PlaneSpec spec = p.planes;
    spec.channels = std::min(p.group, channels - c0);
    for (int64_t i = 0; i < images; ++i) {  // in order: a transform's spill lands on the next
      const T* image = ops.x + (image0 + i) * ops.xs[0] + c0 * ops.xs[1];
      T* v = s.v1 + i * image_positions;
      if (ops.input_rows) {
        k.winograd_h_input(image, ops.xs[1], ops.xs[2], g.height, 2 * ty0 - g.ph, ops.x_end,
                           spec.channels, rows, width, v, p.v1_channel, p.v1_point);
      } else {
        k.build_planes(image, ops.xs[1], ops.xs[2], ops.xs[3], g.height, width, spec, 2 * ty0,
                       s.planes);
        k.winograd_h_input(s.planes, spec.plane_size(), spec.wq, spec.hb, 0,
                           s.planes + spec.size(), spec.channels, rows, width, v, p.v1_channel,
                           p.v1_point);
      }
    }
    for (int64_t xi = 0; xi < kPoints; ++xi) {
      for (const auto& [start, size] : p.rank_blocks) {
        k.tap_conv(s.v1 + xi * p.v1_point, ops.v1_offsets, spec.channels,
                   ops.u1 + xi * ops.layout.u1_point + start * channels + c0, channels, size,
                   nullptr, c0 > 0, false, s.m1 + xi * p.m1_point + start * p.count1, p.count1,
                   count1, nullptr, 0);
      }
    }
  }
  // The intermediate's rows, between their zero padding. At an odd height the last tile's
  // second row is computed in vain (the second conv does not read it).
  for (int64_t i = 0; i < images; ++i) {
    k.winograd_h_output(s.m1 + i * image_positions, rank, p.count1, p.m1_point, rows, width,
                        s.mid + i * p.mid_image + g.pw, p.mid_pitch, p.mid_channel);
  }
  // Second conv over the item's output rows (its images' one after another), a block of output
  // channels at a time: transform, 4 point products, then A^T M with the epilogue into the row
  // buffer, from which the valid values go to the output.
  const int64_t out_rows = std::min(2 * rows, g.out_h - 2 * ty0);  // per image
  const int64_t image_tiles = out_rows * p.tiles_w;
  const int64_t count2 = round_up(images * image_tiles, kCountAlign);
  for (int64_t i = 0; i < images; ++i) {  // in order: a transform's spill lands on the next
    k.winograd_w_input(s.mid + i * p.mid_image, p.mid_channel, p.mid_pitch, rank, out_rows,
                       p.tiles_w, s.v2 + i * image_tiles, p.v2_channel, p.v2_point);
  }
  const bool residual = ops.residual != nullptr;
  const int64_t image_outputs = out_rows * g.out_w;
  for (const auto& [start, size] : p.out_blocks) {
    for (int64_t xi = 0; xi < kPoints; ++xi) {
      k.tap_conv(s.v2 + xi * p.v2_point, ops.v2_offsets, rank,
                 ops.u2 + xi * ops.layout.u2_point + start * rank, rank, size, nullptr, false,
                 false, s.m2 + xi * p.m2_point, p.m2_ld, count2, nullptr, 0);
    }
    const T* bias = ops.bias ? ops.bias + start : nullptr;
    if (ops.direct) {  // each image's rows straight into the output, the residual added there
      for (int64_t i = 0; i < images; ++i) {
        const T* res = residual ? ops.residual + (image0 + i) * ops.rs[0] + start * ops.rs[1] +
                                      2 * ty0 * g.out_w
                                : nullptr;
        k.winograd_w_output(s.m2 + i * image_tiles, size, p.m2_ld, p.m2_point, out_rows,
                            p.tiles_w, g.out_w, bias, res, ops.rs[1], g.relu,
                            ops.out + (image0 + i) * ops.os[0] + start * ops.os[1] +
                                2 * ty0 * g.out_w,
                            g.out_w, ops.os[1]);
      }
      continue;
    }
    // Else into the row buffer (the ReLU there only without a residual, which comes first),
    // and from there to the output.
    k.winograd_w_output(s.m2, size, p.m2_ld, p.m2_point, images * out_rows, p.tiles_w, g.out_w,
                        bias, nullptr, 0, g.relu && !residual, s.rows, g.out_w, p.row_ld);
    copy_out_rows(k, s.rows, p.row_ld, image_outputs, g.out_w, images, out_rows, g.out_w, image0,
                  start, size, 2 * ty0, ops.residual, ops.rs, g.relu, ops.out, ops.os);
  }
}

}  // namespace

bool spatial_winograd_pays(const FconvGeometry& g) {
  const int64_t positions = g.batch * ceil_div(g.out_h, 2) * g.width;  // of the first conv
  const int64_t min_positions =
      g.rank >= kMinRankForFewerPositions ? kMinPositions : kMinPositionsAtLowRank;
  const int64_t min_rank = cpu_kernels().vector_bits >= 512 ? kMinRankWide : kMinRank;
  return g.rank >= min_rank && g.in_channels >= kMinChannels && positions >= min_positions;
}

template <typename T>
void spatial_winograd_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs,
                                      const T* w1, const T* w2, const T* bias,
                                      const T* residual, const int64_t* rs, T* out,
                                      const int64_t* os) {
  const Plan p = make_plan<T>(g);
  const WeightLayout layout = weight_layout(g);
  std::vector<int64_t> v1_offsets(p.group), v2_offsets(g.rank);
  for (int64_t t = 0; t < p.group; ++t) v1_offsets[t] = t * p.v1_channel;
  for (int64_t j = 0; j < g.rank; ++j) v2_offsets[j] = j * p.v2_channel;
  const T* x_end = x + (g.batch - 1) * xs[0] + (g.in_channels - 1) * xs[1] +
                   (g.height - 1) * xs[2] + (g.width - 1) * xs[3] + 1;
  const bool direct = rows_like_nchw(g.out_w, os, residual != nullptr, rs);
  const bool input_rows = xs[3] == 1;
  const int64_t work = kPoints * g.rank * (p.count1 * g.in_channels + p.count2 * g.out_channels);
  const int64_t grain = parallel_grain(work);
  const int64_t busy_threads =
      std::min<int64_t>(at::get_num_threads(), ceil_div(p.items.items, grain));
  const bool private_weights =
      winograd_private_weights(busy_threads, layout.size * static_cast<int64_t>(sizeof(T)));
  const T* shared_u = nullptr;
  std::vector<T> own;  // where U goes past kRetainedCallBytes
  if (!private_weights) {
    T* u = call_buffer<T>(layout.size, &own);
    transform_weights(g, layout, w1, w2, u);
    shared_u = u;
  }
  at::parallel_for(0, p.items.items, grain, [&](int64_t begin, int64_t end) {
    const Scratch<T> scratch =
        thread_scratch<T>(p, g, private_weights ? layout.size : 0, !input_rows);
    const T* u = shared_u;
    if (private_weights) {
      transform_weights(g, layout, w1, w2, scratch.u);
      u = scratch.u;
    }
    const Operands<T> ops{x,        xs,
                          x_end,    u,
                          u + kPoints * layout.u1_point,
                          layout,   bias,
                          residual, rs,
                          out,      os,
                          v1_offsets.data(), v2_offsets.data(),
                          direct,   input_rows};
    for (int64_t item = begin; item < end; ++item) run_item(g, p, ops, item, scratch);
  });
}

template void spatial_winograd_factored_conv2d<float>(const FconvGeometry&, const float*,
                                                      const int64_t*, const float*, const float*,
                                                      const float*, const float*,
                                                      const int64_t*, float*, const int64_t*);
template void spatial_winograd_factored_conv2d<double>(const FconvGeometry&, const double*,
                                                       const int64_t*, const double*,
                                                       const double*, const double*,
                                                       const double*, const int64_t*, double*,
                                                       const int64_t*);

}  // namespace fconv_cpu
}  // namespace trp_ext
