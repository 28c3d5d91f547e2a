// CPU kernel of factored_conv2d: both convs in one pass per band of output rows.
//
// A work item is one image and one band of output rows. It
//   1. copies the input rows the band needs into "planes": zero-padded and split by stride phase,
//      so that every tap (input channel, kernel offset) of the first conv reads one contiguous
//      run. Output pixel (oh, ow) of the band sits at q = oh * wq + ow; the wq - Wo columns past
//      each row's end are computed and thrown away, which keeps every tap a single run;
//   2. runs the first conv into an r-row intermediate held in a per-thread buffer that stays in
//      L2 (the intermediate never goes back to memory), a group of input channels at a time;
//   3. spatial scheme only: lays the intermediate out as planes for the 1 x kw conv (width
//      padding and stride phases) in the same way;
//   4. runs the second conv with the bias and ReLU epilogue, a few output channels at a time,
//      and copies the valid columns into the output (NCHW or channels_last, any strides); with
//      a residual, the copy adds it and applies the ReLU instead. Into an NCHW output (and a
//      residual laid out like it, if any): the channel scheme's intermediate rows are first
//      compacted to the output's row length (the spatial scheme's laid out as one array per
//      kernel column in rows of that length, where that computes fewer positions, see
//      direct_output), and the second conv then writes the band's output rows, residual and
//      ReLU included, straight from its registers (no copy).
// Both convs are the same micro-kernel (factored_conv2d_kernels.h), run over different taps.
// Items run in parallel with at::parallel_for, so batch 1 still uses every core. A batch-1 image
// whose few output rows would make uneven bands is split by channels instead (run_split_image).
// Two other paths take the calls where they do less work: Winograd (3x3 stride-1 layers:
// factored_conv2d_winograd.cpp for the channel scheme, factored_conv2d_winograd_spatial.cpp for
// the spatial one) and the channel-vectorised path (factored_conv2d_cv.cpp, whole images per
// thread, where the bands' thrown-away positions cost more than packing the weights).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <vector>

#include "common/factored_conv2d_checks.h"
#include "cpu/factored_conv2d_cv.h"
#include "cpu/factored_conv2d_kernels.h"
#include "cpu/factored_conv2d_path_switch.h"
#include "cpu/factored_conv2d_shared.h"
#include "cpu/factored_conv2d_split.h"
#include "cpu/factored_conv2d_winograd.h"

namespace trp_ext {
namespace {

using fconv_cpu::ceil_div;
using fconv_cpu::kPositionAlign;
using fconv_cpu::kernels_for;
using fconv_cpu::KernelSet;
using fconv_cpu::kMaxRows;
using fconv_cpu::PlaneSpec;
using fconv_cpu::round_up;
using fconv_cpu::row_blocks;
using trp_ext::PathMode;

// Output positions per band (when the batch gives every thread enough bands). A band rebuilds
// the (kh - 1) * dh / sh + 1 halo rows below it, which favours tall bands; its intermediate
// (r x positions) must stay in L2 for the second conv. Picked from 192..1536 by measurement on
// the 2-core AVX2 EPYC (bench/bench_factored_conv.py shapes); 384..1536 were within the noise of
// that shared machine, 192 was slower.
constexpr int64_t kTargetBandPositions = 768;

// Stage 1 runs over groups of input channels whose planes fit in this much (accumulating the
// intermediate group by group), so that the planes stay near the core across the rank
// blocks: without it, the 590 KiB of stride-2 planes of a 512-channel layer came from L3 22
// times per band. A group also spans at least kMinGroupTaps taps: each group reloads and
// stores the accumulators, which short tap loops (3 taps a channel, spatial) cannot amortise.
// Interleaved A/B runs over the bench shapes: 64 KiB beat 256 KiB and "no groups" by up to
// 35% on stride-2 layers and was never worse; 16-32 KiB and 1-256 minimum taps were alike.
constexpr int64_t kPlaneGroupBytes = 64 << 10;
constexpr int64_t kMinGroupTaps = 96;

// Calls whose stride-phase planes would hold more than this many elements per band, and more
// than kMaxPlaneRatio times the input and output images, run the unfused composition: a
// padding or dilation far beyond the image (1e5 on an 8x8 input) or a huge stride would make
// the planes (zeros almost all) exhaust memory for an output torch's convs compute at once.
constexpr double kMinPlaneLimit = 1 << 22;
constexpr double kMaxPlaneRatio = 16.0;

// Whether the planes of a band (at most the whole output) stay within those limits. In double:
// the sizes of such calls overflow int64.
bool planes_fit(const FconvGeometry& g) {
  const double rows = static_cast<double>(g.out_h) + (g.kh - 1.0) * g.dh / g.sh + 2.0;
  const double pitch = std::max<double>(g.out_w, (g.width + g.pw + g.sw - 1.0) / g.sw);
  const double mid_channels = g.spatial ? static_cast<double>(g.rank) : 0.0;
  const double x_planes = static_cast<double>(g.in_channels) * g.sh * (g.spatial ? 1.0 : g.sw) * rows *
                          (g.spatial ? g.width : pitch);
  const double mid_planes = mid_channels * g.sw * (g.out_h + 1.0) * pitch;
  const double images = static_cast<double>(g.in_channels) * g.height * g.width +
                        static_cast<double>(g.out_channels) * g.out_h * g.out_w;
  return x_planes + mid_planes <= std::max(kMinPlaneLimit, kMaxPlaneRatio * images);
}

// One part of an image split across threads (see run_split_image): rows [r0, r1) of the
// intermediate and the output rows of out_blocks, in register blocks (absolute row indices).
struct SplitPart {
  int64_t r0 = 0, r1 = 0;
  fconv_cpu::RowBlocks rank_blocks, out_blocks;
};

// Register blocks of rows [begin, end).
fconv_cpu::RowBlocks row_blocks_from(int64_t begin, int64_t end) {
  fconv_cpu::RowBlocks blocks = row_blocks(end - begin);
  for (auto& block : blocks) block.first += begin;
  return blocks;
}

// Everything about a call that does not depend on the work item.
struct BandPlan {
  int64_t rows = 0;   // output rows per band
  int64_t bands = 0;  // bands per image
  PlaneSpec x_planes;
  std::vector<int64_t> taps1;
  int64_t count1 = 0;  // stage-1 positions of a full band (a multiple of kPositionAlign)
  PlaneSpec mid_planes;  // spatial scheme only
  std::vector<int64_t> taps2;
  int64_t count2 = 0;  // stage-2 positions of a full band
  int64_t pitch2 = 0;  // stage-2 positions per output row
  // The second conv's input laid out in rows of the output's length, for direct outputs.
  // Channel scheme: the intermediate compacted, tap j of the 1x1 conv at row j. Spatial
  // scheme: kw arrays of rank rows, array kx gathered so that its position q = oh * out_w + ow
  // holds the intermediate value kernel column kx reads for output (oh, ow), or zero where that
  // is padding; tap (j, kx) at row j of array kx.
  int64_t dense_ld = 0;
  std::vector<int64_t> taps2_dense;
  int64_t in_place_column = -1;  // spatial: the kx whose array stage 1 writes itself, or -1
  int64_t slack = 0;   // readable elements past the last plane: taps over-read past a band
  int64_t work = 0;    // multiply-adds per band
  int64_t group = 0;   // input channels per stage-1 group
  fconv_cpu::RowBlocks rank_blocks, out_blocks;  // register blocks of both convs' output rows
  // A split plan's shares of one image (see run_split_image), one per part; empty when banded.
  std::vector<SplitPart> parts;
};

// The positions a band of `rows` output rows computes in the first and the second conv,
// thrown-away columns included, as make_plan lays it out (pitch2: stage-2 positions per row).
struct BandCounts {
  int64_t count1, count2;
};
BandCounts band_counts(const FconvGeometry& g, int64_t pitch2, int64_t rows) {
  const int64_t count1 = round_up(rows * (g.spatial ? g.width : pitch2), kPositionAlign);
  return {count1, g.spatial ? round_up(rows * pitch2, kPositionAlign) : count1};
}

// The multiply-adds of a band of `rows` output rows, thrown-away positions included.
int64_t band_work(const FconvGeometry& g, int64_t rows) {
  const auto [count1, count2] =
      band_counts(g, PlaneSpec::row_length(g.width, g.pw, g.sw, g.out_w), rows);
  const int64_t taps1 = g.in_channels * g.kh * (g.spatial ? 1 : g.kw);
  const int64_t taps2 = g.rank * (g.spatial ? g.kw : 1);
  return count1 * g.rank * taps1 + count2 * g.out_channels * taps2;
}

// element_size: bytes per value of the call's dtype. parts: 0 for a banded plan, else the parts
// a split plan (one band per image) cuts each image into.
BandPlan make_plan(const FconvGeometry& g, int64_t element_size, int64_t parts) {
  BandPlan p;
  const int64_t threads = at::get_num_threads();
  // Output row length in stage-2 positions, to size the bands.
  const int64_t pitch = PlaneSpec::row_length(g.width, g.pw, g.sw, g.out_w);
  // Bands of about kTargetBandPositions positions, all of an image's bands the same height.
  int64_t bands = ceil_div(g.out_h, std::clamp<int64_t>(kTargetBandPositions / pitch, 1, g.out_h));
  // Few items (a small batch): make their number a multiple of the threads, so that none idles.
  if (g.batch * bands < 4 * threads) {
    bands = std::min(g.out_h, ceil_div(round_up(g.batch * bands, threads), g.batch));
  }
  if (parts > 0) bands = 1;
  p.rows = ceil_div(g.out_h, bands);
  p.bands = ceil_div(g.out_h, p.rows);
  const int64_t halo = (g.kh - 1) * g.dh / g.sh;  // plane rows below the band's last row
  p.pitch2 = pitch;
  const BandCounts counts = band_counts(g, pitch, p.rows);
  p.count1 = counts.count1;
  p.count2 = counts.count2;

  PlaneSpec& xs = p.x_planes;
  xs.channels = g.in_channels;
  xs.sh = g.sh;
  xs.ph = g.ph;
  xs.hb = p.rows + halo + 1;  // + 1: see PlaneSpec
  if (g.spatial) {
    // kh x 1 conv: the height parts only; planes are the full, unpadded input rows.
    xs.wq = g.width;
    for (int64_t i = 0; i < g.in_channels; ++i) {
      for (int64_t ky = 0; ky < g.kh; ++ky) p.taps1.push_back(xs.offset(i, ky * g.dh, 0));
    }
    // 1 x kw conv over the band's intermediate rows: the width parts.
    PlaneSpec& ms = p.mid_planes;
    ms.channels = g.rank;
    ms.sw = g.sw;
    ms.pw = g.pw;
    ms.hb = p.rows + 1;  // + 1: see PlaneSpec
    ms.wq = pitch;
    for (int64_t j = 0; j < g.rank; ++j) {
      for (int64_t kx = 0; kx < g.kw; ++kx) p.taps2.push_back(ms.offset(j, 0, kx * g.dw));
    }
  } else {
    xs.sw = g.sw;
    xs.pw = g.pw;
    xs.wq = pitch;
    for (int64_t i = 0; i < g.in_channels; ++i) {
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          p.taps1.push_back(xs.offset(i, ky * g.dh, kx * g.dw));
        }
      }
    }
    // 1x1 conv: tap j is row j of the intermediate.
    for (int64_t j = 0; j < g.rank; ++j) p.taps2.push_back(j * p.count1);
  }
  p.dense_ld = round_up(p.rows * g.out_w, kPositionAlign);
  if (!g.spatial) {
    for (int64_t j = 0; j < g.rank; ++j) p.taps2_dense.push_back(j * p.dense_ld);
  } else {
    // At stride 1 an unshifted kernel column (kx * dw == pw) over rows as long as the output's
    // reads the intermediate as stage 1 lays it out: stage 1 writes that array, no gather.
    if (g.sw == 1 && g.width == g.out_w && g.pw % g.dw == 0 && g.pw / g.dw < g.kw) {
      p.in_place_column = g.pw / g.dw;
    }
    for (int64_t j = 0; j < g.rank; ++j) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        p.taps2_dense.push_back((kx * g.rank + j) * p.dense_ld);
      }
    }
  }
  // A band computes up to kPositionAlign - 1 positions past its last row, and a tap reads up to
  // (kw - 1) * dw / sw columns further; that runs into the next plane, or past the last one.
  p.slack = kPositionAlign + (g.kw - 1) * g.dw / g.sw + 64;
  const int64_t channel_bytes = xs.sh * xs.sw * xs.plane_size() * element_size;
  const int64_t taps_per_channel = g.in_channels > 0 ? static_cast<int64_t>(p.taps1.size()) / g.in_channels : 1;
  p.group = std::max({int64_t{1}, kPlaneGroupBytes / std::max<int64_t>(channel_bytes, 1),
                      ceil_div(kMinGroupTaps, std::max<int64_t>(taps_per_channel, 1))});
  p.rank_blocks = row_blocks(g.rank);
  p.out_blocks = row_blocks(g.out_channels);
  for (int64_t t = 0; t < parts; ++t) {
    SplitPart part;
    part.r0 = g.rank * t / parts;
    part.r1 = g.rank * (t + 1) / parts;
    part.rank_blocks = row_blocks_from(part.r0, part.r1);
    part.out_blocks = row_blocks_from(g.out_channels * t / parts, g.out_channels * (t + 1) / parts);
    p.parts.push_back(std::move(part));
  }
  p.work = band_work(g, p.rows);
  return p;
}

// make_plan's result, kept for the calling thread's last kCachedPlans geometries: a network runs
// the same few layer shapes call after call, and building a plan (a tap offset per input channel
// and kernel offset, the register blocks) took ~2.4 us of a 53 us batch-1 call (64-64 8x8 r20,
// one thread). Shared, so that a plan stays valid for as long as a call holds it: a call may look
// up two (split_parts), and the second lookup can evict or move the first's entry.
constexpr size_t kCachedPlans = 16;
std::shared_ptr<const BandPlan> cached_plan(const FconvGeometry& g, int64_t element_size,
                                            int64_t parts) {
  // Every geometry field make_plan reads. The output size is one: fused_geometry sets a stride
  // to 1 where the output has one row or column, so two calls that differ only in a stride
  // past the image share the other fields but not the output size.
  using Key = std::array<int64_t, 20>;
  struct Entry {
    Key key;
    std::shared_ptr<const BandPlan> plan;
  };
  thread_local std::vector<Entry> cache;  // the most recently added last
  const Key key = {g.spatial,  g.batch, g.in_channels, g.height, g.width, g.rank,
                   g.out_channels, g.out_h, g.out_w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh,
                   g.dw, element_size, at::get_num_threads(), parts};
  for (const Entry& entry : cache) {
    if (entry.key == key) return entry.plan;
  }
  if (cache.size() == kCachedPlans) cache.erase(cache.begin());
  cache.push_back({key, std::make_shared<const BandPlan>(make_plan(g, element_size, parts))});
  return cache.back().plan;
}

// A thread's buffers for one band (fconv_cpu::thread_buffers: kept between calls). The planes
// are zeroed once per call: build_planes writes only their data columns, and the padding columns
// and the slack after the last plane stay zero for every band of the call. The rest is written
// before it is read.
template <typename T>
struct Scratch {
  T* x_planes;
  T* mid;
  T* mid_planes;  // spatial scheme: the intermediate's planes (none on the direct path at stride 1)
  // Direct outputs only (see direct_output): the second conv's input in rows of the output's
  // length (BandPlan::dense_ld): the channel scheme's compacted intermediate, the spatial
  // scheme's gathered arrays.
  T* dense;
  T* out;
};

// direct: whether the call writes its output directly (see direct_output). The planes, and at
// stride 1 the spatial scheme's gathered arrays, are zeroed here: bands write their data columns
// only, so the columns that read padding stay zero for every band of the call. Everything else
// is written before it is read.
// split: for run_split_image, whose parts share the intermediate and the second conv's input
// (SplitBuffers): the thread's own buffers then leave them out, and keep the intermediate's
// planes only as gather_columns' staging.
template <typename T>
Scratch<T> thread_scratch(const BandPlan& p, const FconvGeometry& g, bool direct, bool split) {
  const bool planes = g.spatial && (split ? direct && g.sw > 1 : !direct || g.sw > 1);
  const int64_t mid = split ? 0 : g.rank * p.count1;
  const int64_t dense = direct && !split ? (g.spatial ? g.kw : 1) * g.rank * p.dense_ld : 0;
  const auto parts = fconv_cpu::thread_buffers<T, 5>(
      {p.x_planes.size() + p.slack, mid, planes ? p.mid_planes.size() + p.slack : 0,
       dense, kMaxRows * p.count2});
  const Scratch<T> s{parts[0], parts[1], parts[2], parts[3], parts[4]};
  std::fill(s.x_planes, s.mid, T(0));
  std::fill(s.mid_planes, s.dense, T(0));
  if (direct && g.spatial && g.sw == 1) std::fill(s.dense, s.out, T(0));
  return s;
}

// Spatial scheme: the planes of rows [j0, j1) of a band's intermediate (rows of `width`
// values, row j at mid + j * ld) for the 1 x kw conv, into `planes` (all rows' planes).
template <typename T>
void build_mid_planes(const FconvGeometry& g, const BandPlan& p, const T* mid, int64_t ld,
                      int64_t rows, int64_t j0, int64_t j1, T* planes) {
  PlaneSpec spec = p.mid_planes;
  spec.channels = j1 - j0;
  const int64_t channel = spec.sh * spec.sw * spec.plane_size();
  kernels_for<T>().build_planes(mid + j0 * ld, ld, g.width, int64_t{1}, rows, g.width, spec, 0,
                                planes + j0 * channel);
}

template <typename T>
struct Operands {
  const T* x;
  int64_t xs[4];  // strides of x
  const T* w1;    // (r, taps1) row-major: w1 as it is, contiguous
  const T* w2;    // (n, taps2) row-major
  const T* bias;  // null: no bias
  T* out;
  int64_t os[4];  // strides of the output
  const T* residual;  // null: none; else read with strides rs (0 where it broadcasts)
  int64_t rs[4];
};

// The spatial scheme's direct path reads kw arrays, each as large as the intermediate's
// planes; wider kernels keep the planes. In-process A/B, direct/planes, spatial layers of
// 64-256 channels at ranks n/4: kw 3 and 5 gained 1.0-1.18x, kw 7 gave 0.96-1.08x, and kw 401 on
// a 16000-wide row (a review's case) took 627 ms and 767 MiB against 11 ms.
constexpr int64_t kMaxDirectSpatialKernel = 5;

// Whether stage2 can write this call's output directly: output and residual rows as
// fconv_cpu::rows_like_nchw, and bands of at least one vector of positions. Spatial scheme:
// kernels up to kMaxDirectSpatialKernel wide, and only where that computes fewer second-conv
// positions per band than the planes do: the gathered arrays, whose taps share no cache
// lines, cost more than the copy-out they save where the positions are the same (7-wide
// outputs: 56 either way). In-process A/B on the bench's spatial layers, direct/planes:
// 1.03-1.18x at stride 1 and 1.0-1.19x at stride 2 (b1, median ~1.04) on outputs wider than 7,
// 0.95-0.99x on 7-wide ones at stride 1.
template <typename T>
bool direct_output(const FconvGeometry& g, const BandPlan& p, const Operands<T>& ops) {
  const int64_t shortest = g.out_h - (p.bands - 1) * p.rows;  // the last band's rows
  const bool fewer_positions =
      round_up(p.rows * g.out_w, kPositionAlign) < round_up(p.rows * p.pitch2, kPositionAlign);
  const bool spatial_ok = g.kw <= kMaxDirectSpatialKernel && fewer_positions;
  return fconv_cpu::rows_like_nchw(g.out_w, ops.os, ops.residual != nullptr, ops.rs) &&
         shortest * g.out_w >= kPositionAlign && (!g.spatial || spatial_ok);
}

// Where stage 1 writes a band's intermediate (r rows, row j at j * ld): for the direct
// spatial path, into the gathered array it would otherwise be copied to, if there is one.
template <typename T>
std::pair<T*, int64_t> stage1_target(const FconvGeometry& g, const BandPlan& p,
                                     const Scratch<T>& s, bool direct) {
  if (direct && p.in_place_column >= 0) {
    return {s.dense + p.in_place_column * g.rank * p.dense_ld, p.dense_ld};
  }
  return {s.mid, p.count1};
}

// Spatial scheme: lays the band's intermediate (rows of `width` values, row j at mid + j * ld)
// out as the second conv's arrays (see BandPlan::dense_ld). At stride 1 each is a shifted copy
// (array kx: column ow holds intermediate column ow + kx * dw - pw), whose columns that read
// padding stay as zeroed once per call (the same in every band); at larger strides, each is a
// run of columns of the stride-phase planes build_planes lays out (padding included), as their
// taps read them.
// Rows [j0, j1) of the intermediate only.
template <typename T>
void gather_columns(const FconvGeometry& g, const BandPlan& p, const T* mid, int64_t ld,
                    int64_t rows, int64_t j0, int64_t j1, const Scratch<T>& s) {
  const KernelSet<T>& k = kernels_for<T>();
  if (g.sw > 1) {
    build_mid_planes(g, p, mid, ld, rows, j0, j1, s.mid_planes);
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      for (int64_t j = j0; j < j1; ++j) {
        k.copy_rows(s.mid_planes + p.taps2[j * g.kw + kx], p.pitch2, rows, g.out_w, nullptr, 0,
                    0, false, s.dense + (kx * g.rank + j) * p.dense_ld, g.out_w, 1);
      }
    }
    return;
  }
  for (int64_t kx = 0; kx < g.kw; ++kx) {
    if (kx == p.in_place_column) continue;
    const int64_t shift = kx * g.dw - g.pw;
    // Output columns ow with 0 <= ow + shift < width.
    const int64_t lo = std::max<int64_t>(0, -shift);
    const int64_t hi = std::min(g.out_w, g.width - shift);
    if (hi <= lo) continue;
    for (int64_t j = j0; j < j1; ++j) {
      k.copy_rows(mid + j * ld + lo + shift, g.width, rows, hi - lo, nullptr, 0, 0, false,
                  s.dense + (kx * g.rank + j) * p.dense_ld + lo, g.out_w, 1);
    }
  }
}

// Step 2: the first conv into the intermediate (rows of `blocks`, count1 positions each, row j
// at mid + j * ld) from the band's planes, a group of input channels at a time (at least one
// group, so that c = 0 still writes zeros).
template <typename T>
void stage1(const FconvGeometry& g, const BandPlan& p, const Operands<T>& ops, const T* planes,
            const fconv_cpu::RowBlocks& blocks, T* mid, int64_t ld, int64_t count1) {
  const KernelSet<T>& k = kernels_for<T>();
  const int64_t taps1 = static_cast<int64_t>(p.taps1.size());
  const int64_t taps_per_channel = g.in_channels > 0 ? taps1 / g.in_channels : 0;
  for (int64_t c0 = 0; c0 == 0 || c0 < g.in_channels; c0 += p.group) {
    const int64_t t0 = c0 * taps_per_channel;
    const int64_t tn = std::min(p.group, g.in_channels - c0) * taps_per_channel;
    for (const auto& [start, size] : blocks) {
      k.tap_conv(planes, p.taps1.data() + t0, tn, ops.w1 + start * taps1 + t0, taps1, size,
                 nullptr, c0 > 0, false, mid + start * ld, ld, count1, nullptr, 0);
    }
  }
}

// Step 3: the second conv's input from rows [j0, j1) of the intermediate (as stage1 wrote
// them). Into an NCHW output (see direct_output), rows of the output's length in s.dense (the
// channel scheme's intermediate compacted, dropping the thrown-away columns; the spatial
// scheme's gathered by gather_columns); otherwise the spatial scheme's planes of the
// intermediate in s.mid_planes, and nothing for the channel scheme (its 1x1 conv reads s.mid).
template <typename T>
void stage2_input(const FconvGeometry& g, const BandPlan& p, const T* mid, int64_t ld,
                  int64_t rows, int64_t j0, int64_t j1, bool direct, const Scratch<T>& s) {
  if (direct && g.spatial) {
    gather_columns(g, p, mid, ld, rows, j0, j1, s);
  } else if (direct) {
    for (int64_t j = j0; j < j1; ++j) {
      kernels_for<T>().copy_rows(mid + j * ld, p.pitch2, rows, g.out_w, nullptr, 0, 0, false,
                                 s.dense + j * p.dense_ld, g.out_w, 1);
    }
  } else if (g.spatial) {
    build_mid_planes(g, p, mid, ld, rows, j0, j1, s.mid_planes);
  }
}

// Step 4: the second conv with the epilogue for the output rows of `blocks`, over the band's
// rows (count2 positions), from stage2_input's arrays. direct: the band's rows * out_w positions
// written in place, residual and ReLU included; otherwise a block of output channels at a time
// into s.out, then copied out into the output's layout (with the residual and ReLU).
template <typename T>
void stage2(const FconvGeometry& g, const BandPlan& p, const Operands<T>& ops, int64_t image,
            int64_t oh0, int64_t rows, int64_t count2, const fconv_cpu::RowBlocks& blocks,
            bool direct, const Scratch<T>& s) {
  const KernelSet<T>& k = kernels_for<T>();
  if (direct) {
    const int64_t taps2 = static_cast<int64_t>(p.taps2_dense.size());
    for (const auto& [start, size] : blocks) {
      const T* res = ops.residual ? ops.residual + image * ops.rs[0] + start * ops.rs[1] +
                                        oh0 * ops.rs[2]
                                  : nullptr;
      fconv_cpu::conv1x1_into_rows(k, s.dense, p.taps2_dense.data(), taps2,
                                   ops.w2 + start * taps2, size,
                                   ops.bias ? ops.bias + start : nullptr, g.relu, res, ops.rs[1],
                                   ops.out + image * ops.os[0] + start * ops.os[1] + oh0 * ops.os[2],
                                   ops.os[1], rows * g.out_w, s.out, p.count2);
    }
    return;
  }
  const T* in = g.spatial ? s.mid_planes : s.mid;
  const int64_t taps2 = static_cast<int64_t>(p.taps2.size());
  const bool residual = ops.residual != nullptr;  // then the ReLU follows its addition
  for (const auto& [start, size] : blocks) {
    k.tap_conv(in, p.taps2.data(), taps2, ops.w2 + start * taps2, taps2, size,
               ops.bias ? ops.bias + start : nullptr, false, g.relu && !residual, s.out,
               p.count2, count2, nullptr, 0);
    T* dst = ops.out + image * ops.os[0] + start * ops.os[1] + oh0 * ops.os[2];
    const T* res = residual ? ops.residual + image * ops.rs[0] + start * ops.rs[1] + oh0 * ops.rs[2]
                            : nullptr;
    for (int j = 0; j < size; ++j) {
      k.copy_rows(s.out + j * p.count2, p.pitch2, rows, g.out_w,
                  residual ? res + j * ops.rs[1] : nullptr, ops.rs[2], ops.rs[3], g.relu,
                  dst + j * ops.os[1], ops.os[2], ops.os[3]);
    }
  }
}

// Steps 1-4 for one band of one image, on the calling thread.
template <typename T>
void run_band(const FconvGeometry& g, const BandPlan& p, const Operands<T>& ops, int64_t image,
              int64_t band, const Scratch<T>& s, bool direct) {
  const int64_t oh0 = band * p.rows;
  const int64_t rows = std::min(p.rows, g.out_h - oh0);
  // The last band may be shorter: compute its rows only (buffers keep a full band's layout).
  const auto [count1, count2] = band_counts(g, p.pitch2, rows);
  // 1. Planes of the input rows this band reads.
  kernels_for<T>().build_planes(ops.x + image * ops.xs[0], ops.xs[1], ops.xs[2], ops.xs[3],
                                g.height, g.width, p.x_planes, oh0, s.x_planes);
  const auto [mid, ld] = stage1_target(g, p, s, direct);
  stage1(g, p, ops, s.x_planes, p.rank_blocks, mid, ld, count1);
  stage2_input(g, p, mid, ld, rows, 0, g.rank, direct, s);
  stage2(g, p, ops, image, oh0, rows, count2, p.out_blocks, direct, s);
}

// The buffers the parts of a split image share (see run_split_image): the intermediate, and the
// second conv's input (stage2_input) where it is not the intermediate itself. The calling
// thread's (fconv_cpu::call_buffer), zeroed where stage2_input leaves columns unwritten, one
// part's rows at a time (split_zero).
template <typename T>
struct SplitBuffers {
  T* mid = nullptr;
  T* dense = nullptr;       // direct calls
  T* mid_planes = nullptr;  // spatial calls that are not direct
};

template <typename T>
SplitBuffers<T> split_buffers(const FconvGeometry& g, const BandPlan& p, bool direct,
                              std::vector<T>* own) {
  const int64_t mid = round_up(g.rank * p.count1, 16);
  const int64_t dense = direct ? round_up((g.spatial ? g.kw : 1) * g.rank * p.dense_ld, 16) : 0;
  const int64_t planes = g.spatial && !direct ? p.mid_planes.size() + p.slack : 0;
  T* base = fconv_cpu::call_buffer<T>(mid + dense + planes, own);
  return {base, direct ? base + mid : nullptr, g.spatial && !direct ? base + mid + dense : nullptr};
}

// Zeroes what stage2_input leaves unwritten in a part's rows [j0, j1) of the shared buffers:
// the columns of the spatial scheme's gathered arrays that read padding (stride 1), or the
// padding of its intermediate's planes, and, for the last part (`last`), the slack after them
// (by one part only: at rank 0 every part's rows end there).
template <typename T>
void split_zero(const FconvGeometry& g, const BandPlan& p, bool direct, int64_t j0, int64_t j1,
                bool last, const SplitBuffers<T>& b) {
  if (!g.spatial) return;
  if (direct) {
    if (g.sw > 1) return;  // gather_columns writes every column of its arrays there
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      T* rows = b.dense + (kx * g.rank + j0) * p.dense_ld;
      std::fill(rows, rows + (j1 - j0) * p.dense_ld, T(0));
    }
    return;
  }
  const PlaneSpec& spec = p.mid_planes;
  const int64_t channel = spec.sh * spec.sw * spec.plane_size();
  const int64_t end = last ? spec.size() + p.slack : j1 * channel;
  std::fill(b.mid_planes + j0 * channel, b.mid_planes + end, T(0));
}

// One image whose band path runs as a single band, split across threads by channels instead
// of positions: each part builds the image's planes, runs the first conv for its share of the
// intermediate's rows and lays them out for the second (into buffers the parts share); then,
// once every part is done, each runs the second conv for its share of the output channels.
// Bands split the positions in whole output rows instead, which a few rows cannot share evenly
// (a 7-row output: 4 + 3 on two threads), and each band reads all of both weights. Building the
// planes once, each part its share of the channels, into a shared buffer (one more region)
// measured slower: 0.7-0.9x on most batch-1 bench layers, as each part's first conv then reads
// planes the other core wrote.
template <typename T>
void run_split_image(const FconvGeometry& g, const BandPlan& p, const Operands<T>& ops,
                     int64_t image, bool direct, const SplitBuffers<T>& shared) {
  const int64_t parts = static_cast<int64_t>(p.parts.size());
  // The shared buffers in place of the thread's own (see thread_scratch), where they are used.
  auto with_shared = [&](Scratch<T> s) {
    s.mid = shared.mid;
    if (direct) s.dense = shared.dense;
    if (g.spatial && !direct) s.mid_planes = shared.mid_planes;
    return s;
  };
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    const Scratch<T> s = with_shared(thread_scratch<T>(p, g, direct, true));
    kernels_for<T>().build_planes(ops.x + image * ops.xs[0], ops.xs[1], ops.xs[2], ops.xs[3],
                                  g.height, g.width, p.x_planes, 0, s.x_planes);
    for (int64_t t = begin; t < end; ++t) {
      const SplitPart& part = p.parts[t];
      split_zero(g, p, direct, part.r0, part.r1, t == parts - 1, shared);
      const auto [mid, ld] = stage1_target(g, p, s, direct);
      stage1(g, p, ops, s.x_planes, part.rank_blocks, mid, ld, p.count1);
      stage2_input(g, p, mid, ld, g.out_h, part.r0, part.r1, direct, s);
    }
  });
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s = with_shared(Scratch<T>{});
    s.out = fconv_cpu::thread_buffers<T, 1>({kMaxRows * p.count2})[0];
    for (int64_t t = begin; t < end; ++t) {
      stage2(g, p, ops, image, 0, g.out_h, p.count2, p.parts[t].out_blocks, direct, s);
    }
  });
}

std::atomic<int64_t> g_split_calls{0};

// kAuto splits an image only where all of these hold. In-process A/B on the bench's batch-1
// layers, two threads, banded / split time under kAlways: 1.05-1.13 on 7x7 outputs, whose 7
// rows make bands of 4 + 3 (the estimated split makespan 0.875-0.909 of the bands'); 0.94-1.01
// on 14x14 outputs (0.963-0.974: 112 positions a band against 216 / 2); 0.82-0.90 on 28x28
// outputs (1.0); 0.82 on spatial 64-64 56x56 r16 (0.928), whose 830 KiB of planes each part
// builds whole; 0.66-1.09 on the CIFAR layers, too small for two threads in bands too. The
// spatial scheme's 7x7 outputs at stride 2 (0.900 and 0.909) gained 1.02-1.06 on a quiet
// machine and lost 0.85-1.0 on a loaded one (two regions wait on the slower thread twice):
// left in bands.
constexpr double kSplitGain = 0.9;                       // the estimate, against the bands'
constexpr int64_t kMaxSplitPlaneBytes = 640 << 10;       // the image's planes
constexpr int64_t kMinSplitWork = 4 * fconv_cpu::kMinWorkPerThread;  // multiply-adds a part

// The parts run_split_image cuts each image of a call into (the banded plan `banded`), or 0 when
// the call runs in bands. kAlways splits every call the band path runs, into at least two parts
// (so that one thread also runs the split code); kAuto splits batch-1 calls on two threads whose
// bands cannot share the positions evenly, within the limits above.
int64_t split_parts(const FconvGeometry& g, const BandPlan& banded, int64_t element_size) {
  const int64_t threads = at::get_num_threads();
  switch (fconv_cpu::split_switch().get()) {
    case PathMode::kAlways:
      return std::max<int64_t>(2, threads);
    case PathMode::kNever:
      return 0;
    case PathMode::kAuto:
      break;
  }
  // Measured on two threads only. With more, each of the parts still builds the whole image's
  // planes, which no estimate here counts: left in bands until measured.
  if (threads != 2 || g.batch >= threads) return 0;
  // Not from a cached split plan: calls that end up in bands would take two cache entries each.
  const int64_t image_work = band_work(g, g.out_h);
  PlaneSpec image_planes = banded.x_planes;  // a band's, grown to the whole image
  image_planes.hb += g.out_h - banded.rows;
  if (image_work / threads < kMinSplitWork ||
      image_planes.size() * element_size > kMaxSplitPlaneBytes) {
    return 0;
  }
  const double banded_makespan =
      static_cast<double>(ceil_div(g.batch * banded.bands, threads) * banded.work);
  const double split_makespan = static_cast<double>(g.batch * image_work) / threads;
  return split_makespan < kSplitGain * banded_makespan ? threads : 0;
}

template <typename T>
void factored_conv2d_cpu_impl(const FconvGeometry& g, const at::Tensor& x, const at::Tensor& w1,
                              const at::Tensor& w2, const std::optional<at::Tensor>& bias,
                              const at::Tensor& residual, at::Tensor& out) {
  Operands<T> ops;
  ops.x = x.const_data_ptr<T>();
  ops.out = out.data_ptr<T>();
  ops.residual = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  for (int d = 0; d < 4; ++d) {
    ops.xs[d] = x.stride(d);
    ops.os[d] = out.stride(d);
    ops.rs[d] = residual.defined() ? residual.stride(d) : 0;
  }
  const at::Tensor w1c = w1.contiguous();
  const at::Tensor w2c = w2.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  ops.w1 = w1c.const_data_ptr<T>();
  ops.w2 = w2c.const_data_ptr<T>();
  ops.bias = bc.defined() ? bc.const_data_ptr<T>() : nullptr;
  if (fconv_cpu::use_winograd(g)) {
    const auto winograd = g.spatial ? &fconv_cpu::spatial_winograd_factored_conv2d<T>
                                    : &fconv_cpu::winograd_factored_conv2d<T>;
    winograd(g, ops.x, ops.xs, ops.w1, ops.w2, ops.bias, ops.residual, ops.rs, ops.out, ops.os);
    return;
  }
  const std::shared_ptr<const BandPlan> banded = cached_plan(g, static_cast<int64_t>(sizeof(T)), 0);
  const BandPlan& plan = *banded;
  const int64_t busiest = ceil_div(g.batch * plan.bands, at::get_num_threads());
  if (fconv_cpu::use_cv(g, busiest * plan.work, static_cast<int64_t>(sizeof(T)))) {
    fconv_cpu::cv_factored_conv2d<T>(g, ops.x, ops.xs, ops.w1, ops.w2, ops.bias, ops.residual,
                                     ops.rs, ops.out, ops.os);
    return;
  }
  if (const int64_t parts = split_parts(g, plan, static_cast<int64_t>(sizeof(T)))) {
    const std::shared_ptr<const BandPlan> split_plan =
        cached_plan(g, static_cast<int64_t>(sizeof(T)), parts);
    const BandPlan& split = *split_plan;
    const bool direct = direct_output(g, split, ops);
    g_split_calls.fetch_add(1, std::memory_order_relaxed);
    std::vector<T> own;
    const SplitBuffers<T> shared = split_buffers<T>(g, split, direct, &own);
    for (int64_t image = 0; image < g.batch; ++image) {
      run_split_image(g, split, ops, image, direct, shared);
    }
    return;
  }
  const int64_t grain = fconv_cpu::parallel_grain(plan.work);
  const bool direct = direct_output(g, plan, ops);
  at::parallel_for(0, g.batch * plan.bands, grain, [&](int64_t begin, int64_t end) {
    const Scratch<T> scratch = thread_scratch<T>(plan, g, direct, false);
    for (int64_t item = begin; item < end; ++item) {
      run_band(g, plan, ops, item / plan.bands, item % plan.bands, scratch, direct);
    }
  });
}

bool cpu_dtype_ok(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

}  // namespace

at::Tensor factored_conv2d_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation,
                               c10::string_view scheme,
                               std::optional<c10::string_view> activation,
                               const std::optional<at::Tensor>& residual) {
  const FconvGeometry checked = check_factored_conv2d_args(x, w1, w2, bias, stride, padding,
                                                           dilation, scheme, activation, residual,
                                                           &cpu_dtype_ok, "float32 or float64");
  const FconvGeometry g = fused_geometry(checked);
  at::Tensor out = empty_factored_conv2d_output(x, g);
  if (out.numel() == 0) return out;
  if (!planes_fit(g)) return unfused_factored_conv2d(checked, x, w1, w2, bias, residual);
  const at::Tensor res = expanded_residual(residual, g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factored_conv2d_cpu", [&] {
    factored_conv2d_cpu_impl<scalar_t>(g, x, w1, w2, bias, res, out);
  });
  return out;
}

namespace fconv_cpu {
int64_t split_image_calls() { return g_split_calls.load(); }
}  // namespace fconv_cpu

TORCH_LIBRARY_IMPL(trp_ext, CPU, m) { m.impl("factored_conv2d", &factored_conv2d_cpu); }

}  // namespace trp_ext
