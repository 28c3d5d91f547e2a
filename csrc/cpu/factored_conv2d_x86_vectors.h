// The 256-bit vector types of the x86 builds of the factored_conv2d CPU kernels, for
// factored_conv2d_kernels_impl.h. Included only inside a target pragma that enables AVX2 and FMA
// (factored_conv2d_avx2.cpp) or more (factored_conv2d_avx512.cpp), after <immintrin.h>, and
// within an anonymous namespace's reach: each build gets its own copy.
//
// Registers is how many vector registers the build may allocate: 16 with AVX2, 32 where
// AVX-512VL gives the same 256-bit instructions EVEX encodings that reach ymm16-ymm31. The
// micro-kernel sizes its register blocks by it.
#pragma once

namespace trp_ext {
namespace fconv_cpu {
namespace {

// Masks for the first n lanes: kLaneMask + kMaxLanes - n holds n all-ones words, then zeros.
constexpr int kMaxLanes = 8;
alignas(64) constexpr int64_t kLaneMask64[2 * kMaxLanes] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                            0,  0,  0,  0,  0,  0,  0,  0};
alignas(64) constexpr int32_t kLaneMask32[2 * kMaxLanes] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                            0,  0,  0,  0,  0,  0,  0,  0};

template <int Registers>
struct YmmF32 {
  using Scalar = float;
  static constexpr int kRegisters = Registers;
  using Reg = __m256;
  static constexpr int kWidth = 8;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float s) { return _mm256_set1_ps(s); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg r) { _mm256_storeu_ps(p, r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  // max returns its second operand when either is NaN, so NaN stays NaN as in torch.relu.
  static Reg relu(Reg r) { return _mm256_max_ps(_mm256_setzero_ps(), r); }
  static __m256i mask(int64_t n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask32 + kMaxLanes - n));
  }
  // Masked-off lanes are not accessed, so a partial run may end at the end of a tensor.
  static Reg load_partial(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask(n)); }
  // Lanes [lo, hi) from p[lane], the others zero and not accessed (p itself may lie outside).
  static Reg load_window(const float* p, int64_t lo, int64_t hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_andnot_si256(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lo)), lane),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), lane));
    return _mm256_maskload_ps(p, in);
  }
  // Not a masked store: those are slow on AMD CPUs. n is the same for every row of a call, so
  // the branches predict well.
  static void store_partial(float* p, Reg r, int64_t n) {
    __m128 v = _mm256_castps256_ps128(r);
    if (n & 4) {
      _mm_storeu_ps(p, v);
      p += 4;
      v = _mm256_extractf128_ps(r, 1);
    }
    if (n & 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), v);
      p += 2;
      v = _mm_movehl_ps(v, v);
    }
    if (n & 1) _mm_store_ss(p, v);
  }
  static void deinterleave(Reg a, Reg b, Reg* even, Reg* odd) {
    // Per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6]; then 64-bit chunks in order 0, 2, 1, 3.
    const __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
    const __m256d o = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xD8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(o, 0xD8));
  }
  // The 3 kWidth values a, b, c as every third one: x0 = (a0 a3 a6 b1 b4 b7 c2 c5), x1 and x2
  // the same from a1 and a2. Each blend puts x's values in lanes that a permutation then sorts.
  static void deinterleave3(Reg a, Reg b, Reg c, Reg* x0, Reg* x1, Reg* x2) {
    const Reg t0 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x92), c, 0x24);  // a0 b1 c2 a3 b4 c5 a6 b7
    const Reg t1 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x24), c, 0x49);  // c0 a1 b2 c3 a4 b5 c6 a7
    const Reg t2 = _mm256_blend_ps(_mm256_blend_ps(a, b, 0x49), c, 0x92);  // b0 c1 a2 b3 c4 a5 b6 c7
    *x0 = _mm256_permutevar8x32_ps(t0, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    *x1 = _mm256_permutevar8x32_ps(t1, _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
    *x2 = _mm256_permutevar8x32_ps(t2, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
  }
  // The inverse of deinterleave: first = (a0 b0 a1 b1 .. a3 b3), second = (a4 b4 .. a7 b7).
  static void interleave(Reg a, Reg b, Reg* first, Reg* second) {
    const Reg lo = _mm256_unpacklo_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const Reg hi = _mm256_unpackhi_ps(a, b);  // a2 b2 a3 b3 | a6 b6 a7 b7
    *first = _mm256_permute2f128_ps(lo, hi, 0x20);
    *second = _mm256_permute2f128_ps(lo, hi, 0x31);
  }
};

template <int Registers>
struct YmmF64 {
  using Scalar = double;
  static constexpr int kRegisters = Registers;
  using Reg = __m256d;
  static constexpr int kWidth = 4;
  static Reg zero() { return _mm256_setzero_pd(); }
  static Reg set1(double s) { return _mm256_set1_pd(s); }
  static Reg load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, Reg r) { _mm256_storeu_pd(p, r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_pd(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_pd(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_pd(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_pd(a, b); }
  static Reg relu(Reg r) { return _mm256_max_pd(_mm256_setzero_pd(), r); }
  static __m256i mask(int64_t n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask64 + kMaxLanes - n));
  }
  static Reg load_partial(const double* p, int64_t n) { return _mm256_maskload_pd(p, mask(n)); }
  static Reg load_window(const double* p, int64_t lo, int64_t hi) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(lo), lane),
                                           _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
    return _mm256_maskload_pd(p, in);
  }
  static void store_partial(double* p, Reg r, int64_t n) {
    __m128d v = _mm256_castpd256_pd128(r);
    if (n & 2) {
      _mm_storeu_pd(p, v);
      p += 2;
      v = _mm256_extractf128_pd(r, 1);
    }
    if (n & 1) _mm_store_sd(p, v);
  }
  static void deinterleave(Reg a, Reg b, Reg* even, Reg* odd) {
    // [a0 b0 a2 b2] and [a1 b1 a3 b3]; then 64-bit chunks in order 0, 2, 1, 3.
    *even = _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xD8);
    *odd = _mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), 0xD8);
  }
  // As YmmF32's: x0 = (a0 a3 b2 c1), x1 = (a1 b0 b3 c2), x2 = (a2 b1 c0 c3).
  static void deinterleave3(Reg a, Reg b, Reg c, Reg* x0, Reg* x1, Reg* x2) {
    const Reg t0 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x4), c, 0x2);  // a0 c1 b2 a3
    const Reg t1 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x9), c, 0x4);  // b0 a1 c2 b3
    const Reg t2 = _mm256_blend_pd(_mm256_blend_pd(a, b, 0x2), c, 0x9);  // c0 b1 a2 c3
    *x0 = _mm256_permute4x64_pd(t0, 0x6C);  // lanes 0 3 2 1
    *x1 = _mm256_permute4x64_pd(t1, 0xB1);  // lanes 1 0 3 2
    *x2 = _mm256_permute4x64_pd(t2, 0xC6);  // lanes 2 1 0 3
  }
  static void interleave(Reg a, Reg b, Reg* first, Reg* second) {
    const Reg lo = _mm256_unpacklo_pd(a, b);  // a0 b0 | a2 b2
    const Reg hi = _mm256_unpackhi_pd(a, b);  // a1 b1 | a3 b3
    *first = _mm256_permute2f128_pd(lo, hi, 0x20);
    *second = _mm256_permute2f128_pd(lo, hi, 0x31);
  }
};

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext
