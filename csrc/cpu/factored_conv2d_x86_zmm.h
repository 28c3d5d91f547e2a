// The 512-bit vector types of the AVX-512 build of the factored_conv2d CPU kernels, for the
// multiply-add loops of factored_conv2d_kernels_impl.h (tap_block, cv_block) only: the
// micro-kernels that hold nearly all of a call's multiply-adds. Included only inside the
// AVX-512 target pragma (factored_conv2d_avx512.cpp), after <immintrin.h>.
//
// Only what those loops use is here: the layout helpers (deinterleave, masks, ...) stay on the
// 256-bit types. Each lane runs the same multiply-adds in the same order as a 256-bit lane does,
// so the two widths give bit-identical results.
#pragma once

namespace trp_ext {
namespace fconv_cpu {
namespace {

struct ZmmF32 {
  using Scalar = float;
  static constexpr int kRegisters = 32;
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float s) { return _mm512_set1_ps(s); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg r) { _mm512_storeu_ps(p, r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  // max returns its second operand when either is NaN, so NaN stays NaN as in torch.relu. The
  // zero-masked form with every lane set: GCC 12's _mm512_max_ps passes an undefined vector
  // that -Wmaybe-uninitialized reports.
  static Reg relu(Reg r) {
    return _mm512_maskz_max_ps(static_cast<__mmask16>(0xFFFF), _mm512_setzero_ps(), r);
  }
};

struct ZmmF64 {
  using Scalar = double;
  static constexpr int kRegisters = 32;
  using Reg = __m512d;
  static constexpr int kWidth = 8;
  static Reg zero() { return _mm512_setzero_pd(); }
  static Reg set1(double s) { return _mm512_set1_pd(s); }
  static Reg load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, Reg r) { _mm512_storeu_pd(p, r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_pd(a, b); }
  static Reg relu(Reg r) {
    return _mm512_maskz_max_pd(static_cast<__mmask8>(0xFF), _mm512_setzero_pd(), r);
  }
};

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext
