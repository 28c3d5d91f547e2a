// Vector loops for the CPU kernels' level-1/2 hot spots, and runtime dispatch to AVX2+FMA.
//
// The extension is built without -march flags (it must load on any x86-64), so plain loops
// compile to SSE2, and GCC never vectorises a floating-point reduction without -ffast-math.
// Kernels are therefore written once with explicit 4-wide vector accumulators (GCC/Clang vector
// extensions) as always-inline `*_impl` functions, and TRP_CPU_DISPATCH compiles each twice:
// inlined into a target("avx2,fma") wrapper and into a generic one, picked at run time.
// A target attribute (unlike `#pragma GCC target`) changes nothing outside the wrapper, so no
// AVX2 code can leak into shared inline functions.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/cpu_features.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define TRP_X86_DISPATCH 1
#define TRP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define TRP_X86_DISPATCH 0
#define TRP_TARGET_AVX2
#endif

#if defined(__GNUC__)
#define TRP_INLINE inline __attribute__((always_inline))
#else
#define TRP_INLINE inline
#endif

#if TRP_X86_DISPATCH
// Keeps the 4-wide vector v in a ymm register where it is used (the empty asm claims to change
// it): GCC otherwise may treat a loaded vector as "equivalent to memory" and fold its load into
// every FMA that uses it, multiplying the loads. Only inside the AVX2 instantiation (kAvx2 =
// true), where a 32-byte vector fits one register, and only for GCC: clang checks the constraint
// against the features of the (inlined, attribute-less) function that holds it and rejects it.
#if defined(__clang__)
#define TRP_PIN_VECTOR(kAvx2, v) \
  do {                           \
    (void)(v);                   \
  } while (0)
#else
#define TRP_PIN_VECTOR(kAvx2, v)                 \
  do {                                           \
    if constexpr (kAvx2) __asm__("" : "+x"(v)); \
  } while (0)
#endif
#else
#define TRP_PIN_VECTOR(kAvx2, v) \
  do {                           \
    (void)(v);                   \
  } while (0)
#endif

namespace trp_ext {
namespace cpu {
namespace simd {

// One decision for every kernel (cpu_features.h), made once per process there.
inline bool has_avx2_fma() { return use_avx2_fma(); }

#if defined(__GNUC__)
// The 32-byte vector type only ever lives inside always-inline functions; GCC's note that
// passing it by value outside AVX code would change the ABI does not apply (setup.py builds
// with -Wno-psabi: the note is raised where templates are instantiated, past any pragma here).
typedef double vd4 __attribute__((vector_size(32)));
TRP_INLINE vd4 load4(const double* p) {
  vd4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
TRP_INLINE void store4(double* p, vd4 v) { std::memcpy(p, &v, sizeof v); }
TRP_INLINE vd4 splat4(double x) { return vd4{x, x, x, x}; }
TRP_INLINE double sum4(vd4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
TRP_INLINE vd4 load4_as_double(const double* p) { return load4(p); }
TRP_INLINE vd4 load4_as_double(const float* p) {
  return vd4{static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2]),
             static_cast<double>(p[3])};
}
#define TRP_VECTOR_LOOPS 1
#else
#define TRP_VECTOR_LOOPS 0
#endif

// sum_i x[i] y[i] in float64, for float64 or float32 rows (converted exactly as they are read,
// so float32 rows give bitwise what their float64 copies give).
template <typename S>
TRP_INLINE double dot_of(const S* __restrict x, const S* __restrict y, int64_t n) {
  int64_t i = 0;
  double s = 0.0;
#if TRP_VECTOR_LOOPS
  vd4 a0 = splat4(0.0), a1 = splat4(0.0), a2 = splat4(0.0), a3 = splat4(0.0);
  for (; i + 16 <= n; i += 16) {  // four accumulators: FMA latency 4, two FMA pipes
    a0 += load4_as_double(x + i) * load4_as_double(y + i);
    a1 += load4_as_double(x + i + 4) * load4_as_double(y + i + 4);
    a2 += load4_as_double(x + i + 8) * load4_as_double(y + i + 8);
    a3 += load4_as_double(x + i + 12) * load4_as_double(y + i + 12);
  }
  for (; i + 4 <= n; i += 4) a0 += load4_as_double(x + i) * load4_as_double(y + i);
  s = sum4((a0 + a1) + (a2 + a3));
#endif
  for (; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  return s;
}

// sum_i x[i] y[i]
TRP_INLINE double dot(const double* __restrict x, const double* __restrict y, int64_t n) {
  return dot_of(x, y, n);
}

// sum_i x[i]^2
TRP_INLINE double sum_squares(const double* x, int64_t n) { return dot(x, x, n); }

// What one pass over a matrix learns (scan_values).
struct Scan {
  double max_abs = 0.0;      // the largest |x[i]|
  double sum_squares = 0.0;  // sum x[i]^2, summed as sum_squares() sums
  bool finite = true;        // no NaN or Inf (x - x is NaN exactly for those)
};

#if TRP_VECTOR_LOOPS
// One vector of scan_values: x[0, 4) as float64 (stored unless dst is null), folded into the
// running maximum magnitude m, NaN/Inf detector p and sum of squares acc.
template <typename S>
TRP_INLINE void scan_vector(const S* x, double* dst, vd4& m, vd4& p, vd4& acc) {
  const vd4 v = load4_as_double(x);
  if (dst != nullptr) store4(dst, v);
  const vd4 magnitude = v < 0.0 ? -v : v;
  m = magnitude > m ? magnitude : m;
  p += v - v;
  acc += v * v;
}
#endif

// One pass over x (float32 or float64): its Scan, and x as float64 into dst unless dst is null.
// The sum of squares is of x as it is (it may overflow or underflow when max_abs is extreme;
// the caller rescales and sums again then), in the order of sum_squares(), so that either gives
// the same bits.
template <typename S>
TRP_INLINE Scan scan_values(const S* __restrict x, int64_t n, double* __restrict dst) {
  Scan scan;
  int64_t i = 0;
  double best = 0.0, poison = 0.0, s = 0.0;
#if TRP_VECTOR_LOOPS
  vd4 a[4] = {splat4(0.0), splat4(0.0), splat4(0.0), splat4(0.0)};
  vd4 m = splat4(0.0), p = splat4(0.0);
  // Blocks of 16 into four accumulators, then of 4 into the first (as dot() sums).
  for (; i + 16 <= n; i += 16) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      scan_vector(x + i + 4 * u, dst == nullptr ? nullptr : dst + i + 4 * u, m, p, a[u]);
    }
  }
  for (; i + 4 <= n; i += 4) scan_vector(x + i, dst == nullptr ? nullptr : dst + i, m, p, a[0]);
  s = sum4((a[0] + a[1]) + (a[2] + a[3]));
  best = m[0] > m[1] ? m[0] : m[1];
  best = m[2] > best ? m[2] : best;
  best = m[3] > best ? m[3] : best;
  poison = sum4(p);
#endif
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    if (dst != nullptr) dst[i] = v;
    const double magnitude = v < 0.0 ? -v : v;
    best = magnitude > best ? magnitude : best;
    poison += v - v;
    s += v * v;
  }
  scan.max_abs = best;
  scan.sum_squares = s;
  scan.finite = poison == 0.0;
  return scan;
}

// y[i] += alpha x[i]
TRP_INLINE void axpy(double alpha, const double* __restrict x, double* __restrict y, int64_t n) {
  int64_t i = 0;
#if TRP_VECTOR_LOOPS
  const vd4 a = splat4(alpha);
  for (; i + 4 <= n; i += 4) store4(y + i, load4(y + i) + a * load4(x + i));
#endif
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// One row of a symmetric matrix-vector product from the upper triangle: returns
// sum_l row[l] v[l] and adds row[l] * vj to w[l], for l in [0, n).
TRP_INLINE double dot_and_axpy(const double* __restrict row, const double* __restrict v,
                               double vj, double* __restrict w, int64_t n) {
  int64_t i = 0;
  double s = 0.0;
#if TRP_VECTOR_LOOPS
  // Two accumulators: one chain of dependent FMAs would run at the FMA latency.
  vd4 acc0 = splat4(0.0), acc1 = splat4(0.0);
  const vd4 b = splat4(vj);
  for (; i + 8 <= n; i += 8) {
    const vd4 r0 = load4(row + i), r1 = load4(row + i + 4);
    acc0 += r0 * load4(v + i);
    acc1 += r1 * load4(v + i + 4);
    store4(w + i, load4(w + i) + r0 * b);
    store4(w + i + 4, load4(w + i + 4) + r1 * b);
  }
  for (; i + 4 <= n; i += 4) {
    const vd4 r = load4(row + i);
    acc0 += r * load4(v + i);
    store4(w + i, load4(w + i) + r * b);
  }
  s = sum4(acc0 + acc1);
#endif
  for (; i < n; ++i) {
    s += row[i] * v[i];
    w[i] += row[i] * vj;
  }
  return s;
}

// row[l] -= a x[l] + b y[l]: one row of a symmetric rank-2 update.
TRP_INLINE void rank2_row(double* __restrict row, double a, const double* __restrict x, double b,
                          const double* __restrict y, int64_t n) {
  int64_t i = 0;
#if TRP_VECTOR_LOOPS
  const vd4 va = splat4(a), vb = splat4(b);
  for (; i + 4 <= n; i += 4) store4(row + i, load4(row + i) - (va * load4(x + i) + vb * load4(y + i)));
#endif
  for (; i < n; ++i) row[i] -= a * x[i] + b * y[i];
}

// rank2_row, then dot_and_axpy of the next reduction step on the updated row, in one pass:
// row[l] -= a x[l] + b y[l] for l in [0, n); returns sum_{l>=0} row[l] v[l] (the diagonal
// row[0] included) and adds row[l] * vj to w[l] for l in [1, n). One load and store of the row
// instead of two: the Householder reduction streams the trailing matrix through L2 each step.
TRP_INLINE double rank2_dot_axpy(double* __restrict row, double a, const double* __restrict x,
                                 double b, const double* __restrict y,
                                 const double* __restrict v, double vj, double* __restrict w,
                                 int64_t n) {
  if (n == 0) return 0.0;
  row[0] -= a * x[0] + b * y[0];
  double s = row[0] * v[0];
  int64_t i = 1;
#if TRP_VECTOR_LOOPS
  const vd4 va = splat4(a), vb = splat4(b), vv = splat4(vj);
  vd4 acc0 = splat4(0.0), acc1 = splat4(0.0);
  for (; i + 8 <= n; i += 8) {
    const vd4 r0 = load4(row + i) - (va * load4(x + i) + vb * load4(y + i));
    const vd4 r1 = load4(row + i + 4) - (va * load4(x + i + 4) + vb * load4(y + i + 4));
    store4(row + i, r0);
    store4(row + i + 4, r1);
    acc0 += r0 * load4(v + i);
    acc1 += r1 * load4(v + i + 4);
    store4(w + i, load4(w + i) + r0 * vv);
    store4(w + i + 4, load4(w + i + 4) + r1 * vv);
  }
  for (; i + 4 <= n; i += 4) {
    const vd4 r = load4(row + i) - (va * load4(x + i) + vb * load4(y + i));
    store4(row + i, r);
    acc0 += r * load4(v + i);
    store4(w + i, load4(w + i) + r * vv);
  }
  s += sum4(acc0 + acc1);
#endif
  for (; i < n; ++i) {
    row[i] -= a * x[i] + b * y[i];
    s += row[i] * v[i];
    w[i] += row[i] * vj;
  }
  return s;
}

// rank2_dot_axpy on two consecutive rows of the trailing matrix at once, A (row_a, n values
// from its diagonal) and the next row B (row_b, n - 1 values from its diagonal, so that B's value
// at column l of A's frame is row_b[l - 1]). Both use the same x, y, v and w in A's frame: A with
// (a_a, b_a, vj_a), B with (a_b, b_b, vj_b); B's diagonal (l = 1) is left out of w, as
// rank2_dot_axpy leaves out a row's first value. The dot products go to *s_a and *s_b. Each
// column's x, y, v and w are loaded once for both rows (and w stored once): 6 loads and 3 stores
// per 4 columns of 2 rows instead of 10 and 4, which bound the one-row loop.
template <bool kAvx2>
TRP_INLINE void rank2_dot_axpy_pair(double* __restrict row_a, double* __restrict row_b,
                                    double a_a, double b_a, double vj_a, double a_b, double b_b,
                                    double vj_b, const double* __restrict x,
                                    const double* __restrict y, const double* __restrict v,
                                    double* __restrict w, int64_t n, double* s_a, double* s_b) {
  // n >= 2: A's diagonal (l = 0, A only) and l = 1 (B's diagonal) by hand.
  row_a[0] -= a_a * x[0] + b_a * y[0];
  double sa = row_a[0] * v[0];
  row_a[1] -= a_a * x[1] + b_a * y[1];
  sa += row_a[1] * v[1];
  w[1] += row_a[1] * vj_a;
  row_b[0] -= a_b * x[1] + b_b * y[1];
  double sb = row_b[0] * v[1];
  int64_t l = 2;
  double* rb = row_b - 1;  // rb[l] is B's value at column l
#if TRP_VECTOR_LOOPS
  const vd4 vaa = splat4(a_a), vba = splat4(b_a), vva = splat4(vj_a);
  const vd4 vab = splat4(a_b), vbb = splat4(b_b), vvb = splat4(vj_b);
  vd4 acc_a = splat4(0.0), acc_b = splat4(0.0);
  for (; l + 4 <= n; l += 4) {
    vd4 xl = load4(x + l), yl = load4(y + l), vl = load4(v + l);
    // Each is used for both rows: kept in registers, not reloaded by each FMA (see TRP_PIN_VECTOR).
    TRP_PIN_VECTOR(kAvx2, xl);
    TRP_PIN_VECTOR(kAvx2, yl);
    TRP_PIN_VECTOR(kAvx2, vl);
    const vd4 ra = load4(row_a + l) - (vaa * xl + vba * yl);
    const vd4 rbl = load4(rb + l) - (vab * xl + vbb * yl);
    store4(row_a + l, ra);
    store4(rb + l, rbl);
    acc_a += ra * vl;
    acc_b += rbl * vl;
    store4(w + l, (load4(w + l) + ra * vva) + rbl * vvb);
  }
  sa += sum4(acc_a);
  sb += sum4(acc_b);
#endif
  for (; l < n; ++l) {
    row_a[l] -= a_a * x[l] + b_a * y[l];
    rb[l] -= a_b * x[l] + b_b * y[l];
    sa += row_a[l] * v[l];
    sb += rb[l] * v[l];
    w[l] = (w[l] + row_a[l] * vj_a) + rb[l] * vj_b;
  }
  *s_a = sa;
  *s_b = sb;
}

}  // namespace simd
}  // namespace cpu
}  // namespace trp_ext

// Defines `static ret name params` that runs name##_impl args compiled for AVX2+FMA when the
// CPU has it, else compiled for the build's baseline. name##_impl must be TRP_INLINE.
#if TRP_X86_DISPATCH
#define TRP_CPU_DISPATCH(ret, name, params, args)                                 \
  TRP_TARGET_AVX2 static ret name##_avx2 params { return name##_impl args; }      \
  static ret name##_baseline params { return name##_impl args; }                  \
  static ret name params {                                                        \
    return ::trp_ext::cpu::simd::has_avx2_fma() ? name##_avx2 args : name##_baseline args; \
  }
// The same for an impl templated on whether it is compiled for AVX2 (name##_impl<true>), for
// code that needs to know, such as TRP_PIN_VECTOR.
#define TRP_CPU_DISPATCH_TEMPLATE(ret, name, params, args)                        \
  TRP_TARGET_AVX2 static ret name##_avx2 params { return name##_impl<true> args; } \
  static ret name##_baseline params { return name##_impl<false> args; }           \
  static ret name params {                                                        \
    return ::trp_ext::cpu::simd::has_avx2_fma() ? name##_avx2 args : name##_baseline args; \
  }
#else
#define TRP_CPU_DISPATCH(ret, name, params, args) \
  static ret name params { return name##_impl args; }
#define TRP_CPU_DISPATCH_TEMPLATE(ret, name, params, args) \
  static ret name params { return name##_impl<false> args; }
#endif
