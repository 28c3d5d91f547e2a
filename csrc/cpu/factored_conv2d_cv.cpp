// The channel-vectorised path of the CPU factored_conv2d, for small outputs.
//
// The band path (factored_conv2d.cpp) vectorises over output positions: a tap reads one run of
// its planes, so every output row is computed at the planes' row length (one thrown-away column
// at stride 1) and a band rounds its positions up to a vector. A 7 x 7 output computes 56
// positions for 49. Here both convs vectorise over output channels instead (cv_conv): weights
// are packed in panels of kCvPanelBytes of output channels, tap after tap, and each
// position is an address in a list, so exactly the output's positions are computed. A work item
// is one image:
//   1. its input laid out as planes (as the band path does, the whole image at once). The
//      spatial scheme's kh x 1 conv reads small images where they are instead: each class of
//      output rows (top, middle, bottom) runs only the kernel rows that read inside the image,
//      which the packing puts next to each other;
//   2. the first conv into the intermediate, position-major (r channels per position, padded to
//      a panel), a group of input channels at a time; for the spatial scheme the intermediate
//      rows carry zero columns of width padding, so that the 1 x kw conv reads them as taps;
//   3. the second conv into a position-major buffer of the output channels;
//   4. the bias, residual and ReLU on the way into the output (any strides).
// The weights are packed on every call (both factors once per call, in parallel), which is why
// use_cv keeps this path to calls with enough positions to amortise it.
#include "cpu/factored_conv2d_cv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cpu/factored_conv2d_shared.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

// The first conv runs groups of input channels of at least this many taps: each group reloads
// and stores the accumulators, which short groups would not amortise, and a group's share of the
// planes stays near the core across the rank panels. The band path's kMinGroupTaps, not tuned
// again for this path.
constexpr int64_t kGroupTaps = 96;
// The spatial scheme reads images of up to this many bytes where they are (no planes). Their
// first-conv taps read one input row each, from one stream per channel of a group; from larger
// images, which come from memory, the planes' row-by-row copy was faster. In-process A/B,
// direct/planes, the bench's spatial layers at batch 32: 1.07x on 512-512 7x7 (100 KiB an
// image), 0.98-1.03x at 200-400 KiB, 0.92-0.93x at 800 KiB (56 x 56 inputs).
constexpr int64_t kDirectInputBytes = 128 << 10;
// The estimate below counts multiply-adds only; an image's buffers (its planes, intermediate
// and output, whole) outgrow the caches past this many output positions, where the band path's
// bands stay in L2. In-process, auto/band at 2 threads: 28 x 28 outputs gained 1.05-1.16x
// (bench layers at batch 32); 64-64 r32 layers lost at 56 x 56 (channel scheme 0.93x, though
// the spatial one gained 1.17x), 112 x 112 (0.87-0.93x) and 224 x 224 (0.80x).
constexpr int64_t kMaxImagePositions = 32 * 32;
// use_cv's price of packing a weight, in multiply-adds of the micro-kernel. Measured, packing
// is dearer: 0.16 ms for the 393k weights of a 512-512 r128 spatial layer on 2 threads, ~45
// multiply-adds a weight at the kernel's rate, bound by reading weights the batch has evicted.
// 20 is the value auto's choices were measured with (every bench layer it moves gained,
// 1.02-1.18x, in-process A/B); a price nearer the measured one would keep the path from calls
// where packing is a larger share. Not re-tuned.
constexpr int64_t kPackCost = 20;

template <typename T>
constexpr int64_t panel_width() {
  return kCvPanelBytes / static_cast<int64_t>(sizeof(T));
}

// Output rows whose first-conv taps are the kernel rows [lo, hi): from zero-padded planes, one
// class of every row and tap; from the input as it is (spatial scheme), the rows, top, middle or
// bottom, whose kernel rows read inside the image.
struct RowClass {
  int64_t lo = 0, hi = 0;
  std::vector<int64_t> off;        // per packed tap: its offset from a position
  std::vector<int64_t> pos, opos;  // the rows' positions: where they read, where they write
};

struct Plan {
  int64_t panel = 0;         // output channels per weight panel
  int64_t r_pad = 0, n_pad = 0;  // r and n rounded up to panels
  int64_t kw1 = 0;           // first-conv kernel columns: kw, or the spatial scheme's 1
  int64_t group = 0;         // input channels per first-conv group
  int64_t mid_width = 0;     // spatial: intermediate columns per row (W + 2 pw)
  bool use_planes = false;   // else the spatial scheme reads the input where it is
  PlaneSpec planes;          // the whole image
  // The first conv's taps in packed order: group after group, in a group kernel row after
  // kernel row, then channel, then kernel column; order[t] is packed tap t's index in w1.
  std::vector<int64_t> order;
  std::vector<RowClass> classes;
  std::vector<int64_t> taps2;        // the second conv's taps in the intermediate, in w2's order
  std::vector<int64_t> pos2, opos2;  // its positions: in the intermediate, in the output buffer
  int64_t mid_size = 0, buf_size = 0;
};

// Calls fn(first channel, channels, first packed tap) for each first-conv group.
template <typename Fn>
void for_each_group(const FconvGeometry& g, const Plan& p, Fn&& fn) {
  for (int64_t c0 = 0; c0 == 0 || c0 < g.in_channels; c0 += p.group) {
    fn(c0, std::min(p.group, g.in_channels - c0), c0 * g.kh * p.kw1);
  }
}

// Whether the spatial scheme may read its input where it is: small images only (see
// kDirectInputBytes), and only with finite first-conv weights. Reading in place skips the taps
// that fall on padding, whose products a conv computes as 0 * w: NaN where w is NaN or +-Inf.
template <typename T>
bool reads_input_in_place(const FconvGeometry& g, const T* w1) {
  if (!g.spatial ||
      g.in_channels * g.height * g.width * static_cast<int64_t>(sizeof(T)) > kDirectInputBytes) {
    return false;
  }
  // v * 0 is 0 for finite v and NaN otherwise; in eight independent sums, which the compiler
  // vectorises without reordering a sum.
  const int64_t count = g.rank * g.in_channels * g.kh;
  T sums[8] = {};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (int k = 0; k < 8; ++k) sums[k] += w1[i + k] * T(0);
  }
  for (; i < count; ++i) sums[0] += w1[i] * T(0);
  T total = 0;
  for (T sum : sums) total += sum;
  return total == T(0);
}

// xs: the input's strides; in_place: the spatial scheme reads the input where it is (see
// reads_input_in_place).
Plan make_plan(const FconvGeometry& g, int64_t panel, const int64_t* xs, bool in_place) {
  Plan p;
  p.panel = panel;
  p.r_pad = round_up(g.rank, panel);
  p.n_pad = round_up(g.out_channels, panel);
  p.kw1 = g.spatial ? 1 : g.kw;
  p.group = std::max<int64_t>(1, ceil_div(kGroupTaps, g.kh * p.kw1));
  p.mid_width = g.spatial ? g.width + 2 * g.pw : g.out_w;
  const int64_t first_width = g.spatial ? g.width : g.out_w;  // first-conv positions per row
  const auto mid_position = [&](int64_t oh, int64_t w) {
    return (oh * p.mid_width + (g.spatial ? g.pw : 0) + w) * p.r_pad;
  };
  p.use_planes = !in_place;
  if (p.use_planes) {
    PlaneSpec& s = p.planes;
    s.channels = g.in_channels;
    s.ph = g.ph;
    // The spatial scheme's planes split the rows by phase (its taps are 1 wide, so that costs
    // the copy nothing). The channel scheme's are the zero-padded image at unit stride, the conv's
    // stride in the positions instead: a plain row copy, where a stride-2 split deinterleaves
    // every short row (14 values at 14 x 14) into two phases. One thread, the two builds
    // alternating, 3 rounds: 1.01-1.08x on 512-512 14x14 s2 r128 b32 and 1.03-1.04x on 128-256
    // 28x28 s2 r64 b32 (the planes still take ~5% there: reading the input). Prefetching the
    // next image's input during the first conv brought nothing more.
    int64_t row_step = 1, column_step = 1;  // plane rows and columns between output positions
    if (g.spatial) {
      s.sh = g.sh;
      s.wq = g.width;
      s.hb = g.out_h + (g.kh - 1) * g.dh / g.sh + 1;  // + 1: see PlaneSpec
    } else {
      s.pw = g.pw;
      row_step = g.sh;
      column_step = g.sw;
      s.wq = std::max(g.width + g.pw, (g.out_w - 1) * g.sw + (g.kw - 1) * g.dw + 1);
      s.hb = (g.out_h - 1) * g.sh + (g.kh - 1) * g.dh + 2;  // + 1: see PlaneSpec
    }
    RowClass all;
    all.hi = g.kh;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t w = 0; w < first_width; ++w) {
        all.pos.push_back(oh * row_step * s.wq + w * column_step);
        all.opos.push_back(mid_position(oh, w));
      }
    }
    p.classes.push_back(std::move(all));
  } else {
    // Kernel rows ky read input row oh * sh - ph + ky * dh: inside the image for ky in [lo, hi).
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t top = oh * g.sh - g.ph;
      int64_t lo = 0, hi = 0;
      while (lo < g.kh && top + lo * g.dh < 0) ++lo;
      for (hi = lo; hi < g.kh && top + hi * g.dh < g.height; ++hi) {
      }
      auto found = std::find_if(p.classes.begin(), p.classes.end(),
                                [&](const RowClass& c) { return c.lo == lo && c.hi == hi; });
      if (found == p.classes.end()) {
        p.classes.push_back({lo, hi, {}, {}, {}});
        found = p.classes.end() - 1;
      }
      for (int64_t w = 0; w < first_width; ++w) {
        // From the first kernel row the class reads (inside the image, so never negative).
        found->pos.push_back(lo < hi ? (top + lo * g.dh) * xs[2] + w * xs[3] : 0);
        found->opos.push_back(mid_position(oh, w));
      }
    }
  }
  for_each_group(g, p, [&](int64_t c0, int64_t channels, int64_t) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t i = c0; i < c0 + channels; ++i) {
        for (int64_t kx = 0; kx < p.kw1; ++kx) {
          p.order.push_back((i * g.kh + ky) * p.kw1 + kx);
          for (RowClass& c : p.classes) {
            c.off.push_back(!p.use_planes ? i * xs[1] + (ky - c.lo) * g.dh * xs[2]
                                      : p.planes.offset(i, ky * g.dh, kx * g.dw));
          }
        }
      }
    }
  });
  if (g.spatial) {
    for (int64_t j = 0; j < g.rank; ++j) {
      for (int64_t kx = 0; kx < g.kw; ++kx) p.taps2.push_back(kx * g.dw * p.r_pad + j);
    }
  } else {
    for (int64_t j = 0; j < g.rank; ++j) p.taps2.push_back(j);
  }
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      p.pos2.push_back((oh * p.mid_width + ow * (g.spatial ? g.sw : 1)) * p.r_pad);
      p.opos2.push_back((oh * g.out_w + ow) * p.n_pad);
    }
  }
  p.mid_size = g.out_h * p.mid_width * p.r_pad;
  p.buf_size = g.out_h * g.out_w * p.n_pad;
  return p;
}

// Panel b of a packed (rows, taps) matrix: dst[(b * taps + t) * panel + k] = w[(b * panel + k)
// * taps + order[t]] (order: the identity when empty), zero for rows past the last. In blocks of
// kPackTaps taps, whose packed values stay in L1 while the panel's rows are read along.
constexpr int64_t kPackTaps = 64;
template <typename T>
void pack_panels(const T* w, int64_t rows, int64_t taps, int64_t panel,
                 const std::vector<int64_t>& order, T* packed) {
  at::parallel_for(0, ceil_div(rows, panel), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* dst = packed + b * taps * panel;
      for (int64_t t0 = 0; t0 < taps; t0 += kPackTaps) {
        const int64_t t1 = std::min(taps, t0 + kPackTaps);
        for (int64_t k = 0; k < panel; ++k) {
          const int64_t row = b * panel + k;
          for (int64_t t = t0; t < t1; ++t) {
            dst[t * panel + k] = row < rows ? w[row * taps + (order.empty() ? t : order[t])] : T(0);
          }
        }
      }
    }
  });
}

template <typename T>
struct Operands {
  const T* x;
  const int64_t* xs;
  const T* w1p;  // packed panels of w1 (r_pad / panel of them)
  const T* w2p;  // packed panels of w2
  const T* bias;
  const T* residual;
  const int64_t* rs;
  T* out;
  const int64_t* os;
};

// The intermediate's width padding (spatial scheme) is never written: zeroed once per call, it
// stays zero for every image. The planes' padding likewise (see build_planes).
template <typename T>
std::array<T*, 3> thread_scratch(const Plan& p) {
  const auto parts = thread_buffers<T, 3>({p.planes.size(), p.mid_size, p.buf_size});
  std::fill(parts[0], parts[2], T(0));
  return parts;
}

template <typename T>
void run_image(const FconvGeometry& g, const Plan& p, const Operands<T>& ops, int64_t image,
               const std::array<T*, 3>& s) {
  const KernelSet<T>& k = kernels_for<T>();
  T* mid = s[1];
  T* buf = s[2];
  const T* x = ops.x + image * ops.xs[0];
  const T* in = x;
  if (p.use_planes) {
    k.build_planes(x, ops.xs[1], ops.xs[2], ops.xs[3], g.height, g.width, p.planes, 0, s[0]);
    in = s[0];
  }
  const int64_t taps1 = static_cast<int64_t>(p.order.size());
  const int64_t kernel_row = p.kw1;  // packed taps per channel and kernel row
  for_each_group(g, p, [&](int64_t c0, int64_t channels, int64_t t0) {
    for (const RowClass& c : p.classes) {
      // Kernel rows [lo, hi) of the group's channels: consecutive packed taps. None (rows that
      // read only padding): zeros, written with the first group.
      const int64_t first = t0 + c.lo * channels * kernel_row;
      const int64_t taps = std::max<int64_t>(0, c.hi - c.lo) * channels * kernel_row;
      if (taps == 0 && c0 > 0) continue;
      for (int64_t b = 0; b < p.r_pad / p.panel; ++b) {
        k.cv_conv(in, c.off.data() + first, taps, ops.w1p + (b * taps1 + first) * p.panel,
                  c.pos.data(), static_cast<int64_t>(c.pos.size()), mid + b * p.panel,
                  c.opos.data(), c0 > 0 && taps > 0);
      }
    }
  });
  const int64_t taps2 = static_cast<int64_t>(p.taps2.size());
  const int64_t count2 = static_cast<int64_t>(p.pos2.size());
  for (int64_t b = 0; b < p.n_pad / p.panel; ++b) {
    k.cv_conv(mid, p.taps2.data(), taps2, ops.w2p + b * taps2 * p.panel, p.pos2.data(), count2,
              buf + b * p.panel, p.opos2.data(), false);
  }
  // The epilogue, (bias + sum) + residual then the ReLU as in the band path: the whole image at
  // once where its rows (and the residual's) are consecutive, else row by row.
  const T* res = ops.residual ? ops.residual + image * ops.rs[0] : nullptr;
  T* dst = ops.out + image * ops.os[0];
  if (rows_like_nchw(g.out_w, ops.os, res != nullptr, ops.rs)) {
    k.cv_output(buf, p.n_pad, count2, g.out_channels, ops.bias, res, ops.rs[1], 1, g.relu, dst,
                ops.os[1], 1);
    return;
  }
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    k.cv_output(buf + oh * g.out_w * p.n_pad, p.n_pad, g.out_w, g.out_channels, ops.bias,
                res ? res + oh * ops.rs[2] : nullptr, ops.rs[1], ops.rs[3], g.relu,
                dst + oh * ops.os[2], ops.os[1], ops.os[3]);
  }
}

}  // namespace

bool use_cv(const FconvGeometry& g, int64_t band_makespan, int64_t element_size) {
  const PathMode mode = cv_switch().get();
  if (mode != PathMode::kAuto) return mode == PathMode::kAlways;
  const int64_t positions = g.out_h * g.out_w;
  if (positions > kMaxImagePositions) return false;
  const int64_t panel = kCvPanelBytes / element_size;
  const int64_t r_pad = round_up(g.rank, panel);
  const int64_t n_pad = round_up(g.out_channels, panel);
  const int64_t taps1 = g.in_channels * (g.spatial ? g.kh : g.kh * g.kw);
  const int64_t taps2 = g.rank * (g.spatial ? g.kw : 1);
  const int64_t first = (g.spatial ? g.out_h * g.width : positions) * r_pad * taps1;
  const int64_t second = positions * n_pad * taps2;
  const int64_t packed = r_pad * taps1 + n_pad * taps2;
  const int64_t busiest = ceil_div(g.batch, at::get_num_threads()) * (first + second) +
                          ceil_div(packed * kPackCost, at::get_num_threads());
  return busiest < band_makespan;
}

template <typename T>
void cv_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs, const T* w1,
                        const T* w2, const T* bias, const T* residual, const int64_t* rs, T* out,
                        const int64_t* os) {
  const Plan p = make_plan(g, panel_width<T>(), xs, reads_input_in_place(g, w1));
  const int64_t taps1 = static_cast<int64_t>(p.order.size());
  const int64_t taps2 = static_cast<int64_t>(p.taps2.size());
  std::vector<T> own;  // where the packed panels go past kRetainedCallBytes
  T* w1p = call_buffer<T>(p.r_pad * taps1 + p.n_pad * taps2, &own);
  T* w2p = w1p + p.r_pad * taps1;
  pack_panels(w1, g.rank, taps1, p.panel, p.order, w1p);
  pack_panels(w2, g.out_channels, taps2, p.panel, {}, w2p);
  const Operands<T> ops{x, xs, w1p, w2p, bias, residual, rs, out, os};
  at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
    const auto scratch = thread_scratch<T>(p);
    for (int64_t image = begin; image < end; ++image) run_image(g, p, ops, image, scratch);
  });
}

template void cv_factored_conv2d<float>(const FconvGeometry&, const float*, const int64_t*,
                                        const float*, const float*, const float*, const float*,
                                        const int64_t*, float*, const int64_t*);
template void cv_factored_conv2d<double>(const FconvGeometry&, const double*, const int64_t*,
                                         const double*, const double*, const double*,
                                         const double*, const int64_t*, double*,
                                         const int64_t*);

}  // namespace fconv_cpu
}  // namespace trp_ext
