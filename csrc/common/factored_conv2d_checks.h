// Argument checks, output geometry and the unfused composition of factored_conv2d, shared by its
// CPU and CUDA kernels.
//
// channel scheme: w1 (r, c, kh, kw) with the conv's stride/padding/dilation, then w2 (n, r, 1, 1).
// spatial scheme: w1 (r, c, kh, 1) with the height parts, then w2 (n, r, 1, kw) with the width
// parts. Either way the output is (N, n, Ho, Wo), the size the original kh x kw conv would give.
// A residual, added before the activation, broadcasts to that shape.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <string_view>
#include <vector>

#include "common/checks.h"

namespace trp_ext {

struct FconvGeometry {
  bool spatial = false;  // scheme == "spatial"
  bool relu = false;     // activation == "relu"
  int64_t batch = 0, in_channels = 0, height = 0, width = 0;  // x: (N, c, H, W)
  int64_t rank = 0, out_channels = 0;                         // r, n
  int64_t kh = 0, kw = 0;  // the original kernel: kh from w1; kw from w1 (channel) or w2 (spatial)
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t out_h = 0, out_w = 0;
};

namespace fconv_detail {

constexpr const char* kOp = "factored_conv2d";

inline int64_t checked_pair(at::IntArrayRef values, const char* arg, int64_t minimum,
                            const char* rule, int64_t* second) {
  TRP_CHECK_ARG(values.size() == 2, kOp, arg, "must have 2 values (height, width), got ",
                values.size());
  TRP_CHECK_ARG(values[0] >= minimum && values[1] >= minimum, kOp, arg, "must be ", rule,
                ", got ", values);
  *second = values[1];
  return values[0];
}

// Output size of one axis of a conv; the input must hold at least one dilated kernel window.
// The padded size and the kernel's extent must fit int64: wrapped, they gave a wrong output
// shape without an error.
inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                             int64_t dil, const char* axis) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  TRP_CHECK_ARG(pad <= (kMax - in) / 2, kOp, "padding", "is too large along the ", axis, ": ", pad,
                " (the padded input size overflows int64)");
  TRP_CHECK_ARG(kernel <= 1 || dil <= (kMax - 1) / (kernel - 1), kOp, "dilation",
                "is too large along the ", axis, ": ", dil, " (the dilated kernel extent overflows int64)");
  const int64_t span = dil * (kernel - 1) + 1;
  TRP_CHECK_ARG(in + 2 * pad >= span, kOp, "x", "is too small along its ", axis, ": ", in,
                " plus padding 2*", pad, " is less than the dilated kernel extent ", span);
  return (in + 2 * pad - span) / stride + 1;
}

}  // namespace fconv_detail

// Checks everything that does not depend on the device's dtype support and returns the geometry.
// `dtype_ok` and `dtypes` say which dtypes the calling kernel accepts (e.g. "float32 or float64").
inline FconvGeometry check_factored_conv2d_args(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
    const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::string_view scheme, std::optional<std::string_view> activation,
    const std::optional<at::Tensor>& residual, bool (*dtype_ok)(at::ScalarType),
    const char* dtypes) {
  using fconv_detail::kOp;
  FconvGeometry g;
  TRP_CHECK_ARG(scheme == "channel" || scheme == "spatial", kOp, "scheme",
                "must be 'channel' or 'spatial', got '", scheme, "'");
  g.spatial = scheme == "spatial";
  TRP_CHECK_ARG(!activation.has_value() || *activation == "relu", kOp, "activation",
                "must be None or 'relu', got '", activation.value_or(""), "'");
  g.relu = activation.has_value();

  check_dim(x, 4, kOp, "x");
  check_dim(w1, 4, kOp, "w1");
  check_dim(w2, 4, kOp, "w2");
  TRP_CHECK_ARG_TYPE(dtype_ok(x.scalar_type()), kOp, "x", "must be ", dtypes, " on ",
                     x.device().type(), ", got ", x.scalar_type());
  check_same_device(x, w1, kOp, "w1");
  check_same_device(x, w2, kOp, "w2");
  TRP_CHECK_ARG_TYPE(w1.scalar_type() == x.scalar_type(), kOp, "w1", "must have x's dtype ",
                     x.scalar_type(), ", got ", w1.scalar_type());
  TRP_CHECK_ARG_TYPE(w2.scalar_type() == x.scalar_type(), kOp, "w2", "must have x's dtype ",
                     x.scalar_type(), ", got ", w2.scalar_type());

  g.batch = x.size(0);
  g.in_channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.rank = w1.size(0);
  g.out_channels = w2.size(0);
  g.kh = w1.size(2);
  TRP_CHECK_ARG(w1.size(1) == g.in_channels, kOp, "w1", "must have x's ", g.in_channels,
                " channels in dim 1, got shape ", w1.sizes());
  TRP_CHECK_ARG(g.kh >= 1 && w1.size(3) >= 1, kOp, "w1", "must have a non-empty kernel, got shape ",
                w1.sizes());
  if (g.spatial) {
    TRP_CHECK_ARG(w1.size(3) == 1, kOp, "w1",
                  "must be (r, c, kh, 1) for the spatial scheme, got shape ", w1.sizes());
    TRP_CHECK_ARG(w2.size(1) == g.rank && w2.size(2) == 1 && w2.size(3) >= 1, kOp, "w2",
                  "must be (n, ", g.rank, ", 1, kw) for the spatial scheme (r = w1.size(0) = ",
                  g.rank, "), got shape ", w2.sizes());
    g.kw = w2.size(3);
  } else {
    TRP_CHECK_ARG(w2.size(1) == g.rank && w2.size(2) == 1 && w2.size(3) == 1, kOp, "w2",
                  "must be (n, ", g.rank, ", 1, 1) for the channel scheme (r = w1.size(0) = ",
                  g.rank, "), got shape ", w2.sizes());
    g.kw = w1.size(3);
  }
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_same_device(x, b, kOp, "bias");
    TRP_CHECK_ARG_TYPE(b.scalar_type() == x.scalar_type(), kOp, "bias", "must have x's dtype ",
                       x.scalar_type(), ", got ", b.scalar_type());
    TRP_CHECK_ARG(b.dim() == 1 && b.size(0) == g.out_channels, kOp, "bias",
                  "must be 1-D with w2.size(0) = ", g.out_channels, " values, got shape ",
                  b.sizes());
  }

  g.sh = fconv_detail::checked_pair(stride, "stride", 1, "positive", &g.sw);
  g.ph = fconv_detail::checked_pair(padding, "padding", 0, "non-negative", &g.pw);
  g.dh = fconv_detail::checked_pair(dilation, "dilation", 1, "positive", &g.dw);
  g.out_h = fconv_detail::conv_out_size(g.height, g.kh, g.sh, g.ph, g.dh, "height");
  g.out_w = fconv_detail::conv_out_size(g.width, g.kw, g.sw, g.pw, g.dw, "width");
  // The output's bytes must fit int64 too (the allocator's error would name no argument). The
  // input and weights exist, so only a padding can make the output that large.
  {
    const double bytes = static_cast<double>(g.batch) * static_cast<double>(g.out_channels) *
                         static_cast<double>(g.out_h) * static_cast<double>(g.out_w) *
                         static_cast<double>(x.element_size());
    TRP_CHECK_ARG(bytes < 0x1p62, kOp, "padding", "is too large: ", padding,
                  " gives an output of ", g.batch, " x ", g.out_channels, " x ", g.out_h, " x ",
                  g.out_w, " values, beyond any allocation");
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    check_same_device(x, r, kOp, "residual");
    TRP_CHECK_ARG_TYPE(r.scalar_type() == x.scalar_type(), kOp, "residual",
                       "must have x's dtype ", x.scalar_type(), ", got ", r.scalar_type());
    const int64_t out_shape[4] = {g.batch, g.out_channels, g.out_h, g.out_w};
    bool fits = r.dim() <= 4;
    for (int64_t d = 0; fits && d < r.dim(); ++d) {
      const int64_t size = r.size(r.dim() - 1 - d), want = out_shape[3 - d];
      fits = size == want || size == 1;
    }
    TRP_CHECK_ARG(fits, kOp, "residual", "must broadcast to the output shape [", g.batch, ", ",
                  g.out_channels, ", ", g.out_h, ", ", g.out_w, "], got shape ", r.sizes());
  }
  return g;
}

// The geometry the fused kernels run: an axis with one output reads one window whatever the
// stride, so its stride is 1 there (the CPU kernel sized its stride-phase planes by the stride,
// and a stride of 2^31 crashed). Not for the unfused composition: the library convs derive the
// output size from the stride.
inline FconvGeometry fused_geometry(FconvGeometry g) {
  if (g.out_h == 1) g.sh = 1;
  if (g.out_w == 1) g.sw = 1;
  return g;
}

// The composition of two library convs, with the epilogue: what a kernel runs for the calls its
// fused path does not cover, in the fused output's memory format.
inline at::Tensor unfused_factored_conv2d(const FconvGeometry& g, const at::Tensor& x,
                                          const at::Tensor& w1, const at::Tensor& w2,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& residual) {
  using Pair = std::vector<int64_t>;
  const std::optional<at::Tensor> none;
  at::Tensor mid, out;
  if (g.in_channels == 0 || g.rank == 0 || g.height == 0 || g.width == 0) {
    // Empty sums (no input channels or rank, or an input of padding only): the intermediate is
    // zero and the output the bias alone; the library convs reject these shapes.
    out = at::zeros({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
    if (bias.has_value()) out.add_(bias->view({1, -1, 1, 1}));
  } else if (g.spatial) {
    mid = at::conv2d(x, w1, none, Pair{g.sh, 1}, Pair{g.ph, 0}, Pair{g.dh, 1});
    out = at::conv2d(mid, w2, bias, Pair{1, g.sw}, Pair{0, g.pw}, Pair{1, g.dw});
  } else {
    mid = at::conv2d(x, w1, none, Pair{g.sh, g.sw}, Pair{g.ph, g.pw}, Pair{g.dh, g.dw});
    out = at::conv2d(mid, w2, bias, Pair{1, 1}, Pair{0, 0}, Pair{1, 1});
  }
  if (residual.has_value()) out.add_(*residual);
  if (g.relu) out.relu_();
  return out.contiguous(x.suggest_memory_format());
}

// The residual as a view of the output's shape (0 strides where it broadcasts); undefined
// when not given.
inline at::Tensor expanded_residual(const std::optional<at::Tensor>& residual,
                                    const FconvGeometry& g) {
  if (!residual.has_value()) return at::Tensor();
  return residual->expand({g.batch, g.out_channels, g.out_h, g.out_w});
}

// The output: (N, n, Ho, Wo) in the memory format torch's convs give for x.
inline at::Tensor empty_factored_conv2d_output(const at::Tensor& x, const FconvGeometry& g) {
  return at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                   x.options().memory_format(x.suggest_memory_format()));
}

}  // namespace trp_ext
