// CUDA entry of factored_conv2d: checks, fills the kernel's arguments, launches the fused kernel
// (factored_conv2d_launch.cuh, one translation unit per dtype) on the current stream, or runs the
// unfused composition where the fused kernel does not apply: float64, a rank above kMaxRank, tiles
// that do not fit the GPU's shared memory, or GPUs without the tensor cores for the dtype.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/factored_conv2d_checks.h"
#include "common/path_switch.h"
#include "cuda/factored_conv2d_launch.cuh"

namespace trp_ext {
namespace {

using fconv_cuda::FconvArgs;
using fconv_cuda::kBK;
using fconv_cuda::kBM;
using fconv_cuda::kBN;
using fconv_launch::ceil_div;
using fconv_launch::launch_for_rank;
using fconv_launch::tile_rank;

bool cuda_dtype_ok(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

bool aligned_16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// Whether each run of `vec` stage-1 reduction indices that starts at a multiple of `vec` is
// `vec` consecutive elements of every w1 row, at an aligned offset (the kernel then loads it
// with one 16-byte load). The kernel orders the indices (ky, kx, ci) for channels_last x: a run
// is `vec` channels of one tap when c is a multiple of `vec`, consecutive when w1's channels
// have stride 1 (a channels_last weight). NCHW x orders them (ci, ky, kx): index k is offset k
// of a row stored contiguously, and K1 a multiple of `vec` keeps every run before K1 or past it.
bool w1_runs_are_vectors(const FconvArgs& a, const at::Tensor& w1, int64_t vec) {
  if (!aligned_16(w1) || (a.r > 1 && w1.stride(0) % vec != 0)) return false;
  if (a.cl_in) {
    return a.C % vec == 0 && w1.stride(1) == 1 && (a.kh == 1 || w1.stride(2) % vec == 0) &&
           (a.kw1 == 1 || w1.stride(3) % vec == 0);
  }
  return a.K1 % vec == 0 && (a.C == 1 || w1.stride(1) == a.kh * a.kw1) &&
         (a.kh == 1 || w1.stride(2) == a.kw1) && (a.kw1 == 1 || w1.stride(3) == 1);
}

FconvArgs make_args(const FconvGeometry& g, const at::Tensor& x, const at::Tensor& w1,
                    const at::Tensor& w2, const std::optional<at::Tensor>& bias,
                    const at::Tensor& residual, const at::Tensor& out) {
  FconvArgs a{};
  a.x = x.const_data_ptr();
  a.w1 = w1.const_data_ptr();
  a.w2 = w2.const_data_ptr();
  a.bias = bias.has_value() ? bias->const_data_ptr() : nullptr;
  a.residual = residual.defined() ? residual.const_data_ptr() : nullptr;
  a.out = out.data_ptr();
  for (int d = 0; d < 4; ++d) {
    a.xs[d] = x.stride(d);
    a.os[d] = out.stride(d);
    a.w1s[d] = w1.stride(d);
    a.w2s[d] = w2.stride(d);
  }
  a.bs = bias.has_value() ? bias->stride(0) : 0;
  a.N = static_cast<int>(g.batch);
  a.C = static_cast<int>(g.in_channels);
  a.H = static_cast<int>(g.height);
  a.W = static_cast<int>(g.width);
  a.r = static_cast<int>(g.rank);
  a.n = static_cast<int>(g.out_channels);
  a.Ho = static_cast<int>(g.out_h);
  a.Wo = static_cast<int>(g.out_w);
  a.kh = static_cast<int>(g.kh);
  a.sh = static_cast<int>(g.sh);
  a.ph = static_cast<int>(g.ph);
  a.dh = static_cast<int>(g.dh);
  if (g.spatial) {
    a.kw1 = 1, a.sw1 = 1, a.pw1 = 0, a.dw1 = 1;
    a.kw2 = static_cast<int>(g.kw), a.sw2 = static_cast<int>(g.sw);
    a.pw2 = static_cast<int>(g.pw), a.dw2 = static_cast<int>(g.dw);
  } else {
    a.kw1 = static_cast<int>(g.kw), a.sw1 = static_cast<int>(g.sw);
    a.pw1 = static_cast<int>(g.pw), a.dw1 = static_cast<int>(g.dw);
    a.kw2 = 1, a.sw2 = 1, a.pw2 = 0, a.dw2 = 1;
  }
  a.K1 = a.C * a.kh * a.kw1;
  a.K1p = static_cast<int>(ceil_div(a.K1, kBK) * kBK);
  a.pixels = a.N * a.Ho * a.Wo;
  a.n_chunks = static_cast<int>(ceil_div(a.n, kBN));
  a.relu = g.relu;
  a.cl_in = x.stride(1) == 1 && a.C > 1;
  a.cl_out = out.stride(1) == 1 && a.n > 1;
  const int64_t vec = 16 / static_cast<int64_t>(x.element_size());
  a.vec_in = a.cl_in && a.C % vec == 0 && x.stride(0) % vec == 0 && x.stride(2) % vec == 0 &&
             x.stride(3) % vec == 0 && aligned_16(x);
  a.vec_w1 = w1_runs_are_vectors(a, w1, vec);
  a.vec_w2 = aligned_16(w2) && w2.stride(1) == 1 && (a.n == 1 || w2.stride(0) % vec == 0) &&
             (a.kw2 == 1 || w2.stride(3) % vec == 0);
  return a;
}

// Elements between a tensor's first and last (its strides may hold gaps, e.g. a slice).
int64_t span(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return last + 1;
}

// The fused kernel indexes pixels, reduction indices and image offsets, and holds the stride,
// padding and dilation, in 32-bit ints.
bool fits_int32(const FconvGeometry& g) {
  constexpr int64_t kLimit = std::numeric_limits<int>::max() - 2 * kBM;
  const int64_t k1 = g.in_channels * g.kh * (g.spatial ? 1 : g.kw);
  const bool sizes = g.batch * g.out_h * g.out_w < kLimit && k1 < kLimit && g.height < kLimit &&
                     g.width < kLimit && g.rank * k1 < kLimit &&
                     g.out_channels * g.rank * g.kw < kLimit;
  // padding and dilation * (kernel - 1) are each below 2^62 (checked), so these sums stay exact.
  // The padded extents bound every input coordinate the kernel forms (oh * sh - ph + ky * dh
  // lies in [-ph, height + ph)), so those stay ints too.
  const bool geometry = g.sh < kLimit && g.sw < kLimit && g.ph < kLimit && g.pw < kLimit &&
                        g.dh < kLimit && g.dw < kLimit && g.dh * (g.kh - 1) + g.ph < kLimit &&
                        g.dw * (g.kw - 1) + g.pw < kLimit && g.height + 2 * g.ph < kLimit &&
                        g.width + 2 * g.pw < kLimit;
  return sizes && geometry;
}

}  // namespace

at::Tensor factored_conv2d_cuda(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                c10::string_view scheme,
                                std::optional<c10::string_view> activation,
                                const std::optional<at::Tensor>& residual) {
  const FconvGeometry checked = check_factored_conv2d_args(
      x, w1, w2, bias, stride, padding, dilation, scheme, activation, residual, &cuda_dtype_ok,
      "float32, float16, bfloat16 or float64");
  const FconvGeometry g = fused_geometry(checked);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = empty_factored_conv2d_output(x, g);
  if (out.numel() == 0) return out;

  const cudaDeviceProp& props = *at::cuda::getCurrentDeviceProperties();
  const at::ScalarType dtype = x.scalar_type();
  const bool kernel_runs_dtype = dtype == at::kFloat || (dtype == at::kHalf && props.major >= 7) ||
                                (dtype == at::kBFloat16 && props.major >= 8);
  // The kernel reads a residual at the output's offsets: one with the output's strides (a
  // shortcut in the same memory format); a broadcast or differently laid out one goes unfused.
  const at::Tensor res = expanded_residual(residual, g);
  const bool residual_fits = !res.defined() || res.strides() == out.strides();
  if (dtype != at::kDouble && kernel_runs_dtype && residual_fits && tile_rank(g.rank) != 0 &&
      fits_int32(g)) {
    // The kernel reads the weights through their strides (a channels_last model's weights are
    // not copied each call); only w1 offsets beyond 32 bits need a compact copy.
    const at::Tensor w1c = span(w1) < std::numeric_limits<int>::max() ? w1 : w1.contiguous();
    FconvArgs a = make_args(g, x, w1c, w2, bias, res, out);
    // cp.async needs sm_80; the pipelined path is the tensor cores' (bf16's need sm_80 too).
    a.pipelined = dtype != at::kFloat && props.major >= 8 && a.vec_in && a.vec_w1 &&
                  cuda_pipeline_switch().get() != PathMode::kNever;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    bool launched = false;
    if (dtype == at::kFloat) {
      launched = launch_for_rank<float>(a, g.spatial, props, stream);
    } else if (dtype == at::kHalf) {
      launched = launch_for_rank<__half>(a, g.spatial, props, stream);
    } else {
      launched = launch_for_rank<__nv_bfloat16>(a, g.spatial, props, stream);
    }
    if (launched) return out;
  }
  return unfused_factored_conv2d(checked, x, w1, w2, bias, residual);
}

TORCH_LIBRARY_IMPL(trp_ext, CUDA, m) { m.impl("factored_conv2d", &factored_conv2d_cuda); }

}  // namespace trp_ext
