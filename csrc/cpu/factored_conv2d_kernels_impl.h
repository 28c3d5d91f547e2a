// The building blocks of factored_conv2d_kernels.h as templates over a vector type V:
//   V::Scalar, V::Reg, V::kWidth, V::kRegisters (vector registers the build may allocate: 16
//   or 32), V::zero(), V::set1(s), V::load(p), V::store(p, r),
//   V::fma(a, b, c) = a * b + c, V::add(a, b), V::sub(a, b), V::mul(a, b), V::relu(r),
//   V::deinterleave(a, b, even, odd) (the even and odd lanes of the 2 * kWidth values a, b),
//   V::interleave(a, b, first, second) (its inverse), V::deinterleave3(a, b, c, x0, x1, x2)
//   (every third of the 3 * kWidth values a, b, c, from the first, second and third),
//   V::load_partial(p, n) and
//   V::store_partial(p, r, n) (the first n < kWidth lanes; the others are neither read nor
//   written; loaded as zero), V::load_window(p, lo, hi) (lanes [lo, hi) from p[lane], the
//   others zero and not read).
// Included by exactly the files that instantiate it for one instruction set; everything here
// has internal linkage, so the AVX2 and portable copies never mix at link time.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/factored_conv2d_kernels.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

// ---------------------------------------------------------------------------- tap_conv
// Register blocking: R output rows times NV vectors of consecutive q are accumulated in
// registers while the taps stream by; each tap costs NV vector loads and R broadcasts for
// R * NV FMAs. R * NV stays at 8..12 with 16 vector registers (AVX2) and up to 24 with 32
// (AVX-512VL), so that enough independent FMAs hide the FMA latency, and accumulators, inputs
// and a broadcast fit in the registers.
template <class V, int R, int NV>
inline void tap_block(const typename V::Scalar* in, const int64_t* off, int64_t taps,
                      const typename V::Scalar* w, int64_t ldw, const typename V::Scalar* bias,
                      bool accumulate, bool relu, typename V::Scalar* out, int64_t ldo,
                      const typename V::Scalar* res, int64_t ldr) {
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  Reg acc[R][NV];
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j) {
    const Reg init = bias ? V::set1(bias[j]) : V::zero();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[j][v] = accumulate ? V::load(out + j * ldo + v * L) : init;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const typename V::Scalar* src = in + off[t];
    Reg x[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) x[v] = V::load(src + v * L);
#pragma GCC unroll 8
    for (int j = 0; j < R; ++j) {
      const Reg b = V::set1(w[j * ldw + t]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[j][v] = V::fma(b, x[v], acc[j][v]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      Reg r = acc[j][v];
      if (res != nullptr) r = V::add(r, V::load(res + j * ldr + v * L));
      V::store(out + j * ldo + v * L, relu ? V::relu(r) : r);
    }
  }
}

// Vectors per block for R rows: with 16 registers, 6x2 and 5x2 run at ~95% of the FMA peak
// (measured on an AVX2 EPYC); fewer rows take more vectors, up to the registers. With 32, 6x4
// halves the loads per FMA of 6x2 (R * NV accumulators + NV inputs + a broadcast <= 29).
template <class V, int R>
constexpr int vectors_for_rows() {
  if constexpr (V::kRegisters >= 32) return 4;
  return R >= 4 ? 2 : 4;
}

// A three-vector block of R rows, split into two row blocks where R x 3 accumulators would not
// fit the registers (with the three inputs and a broadcast): for a count ending in a lone
// vector, which on its own would run at under half speed.
template <class V, int R>
inline void tap_block_three(const typename V::Scalar* in, const int64_t* off, int64_t taps,
                            const typename V::Scalar* w, int64_t ldw,
                            const typename V::Scalar* bias, bool accumulate, bool relu,
                            typename V::Scalar* out, int64_t ldo, const typename V::Scalar* res,
                            int64_t ldr) {
  if constexpr (3 * R + 4 <= V::kRegisters) {
    tap_block<V, R, 3>(in, off, taps, w, ldw, bias, accumulate, relu, out, ldo, res, ldr);
  } else {
    constexpr int kFirst = R / 2;
    tap_block<V, kFirst, 3>(in, off, taps, w, ldw, bias, accumulate, relu, out, ldo, res, ldr);
    tap_block<V, R - kFirst, 3>(in, off, taps, w + kFirst * ldw, ldw,
                                bias ? bias + kFirst : nullptr, accumulate, relu,
                                out + kFirst * ldo, ldo, res ? res + kFirst * ldr : nullptr, ldr);
  }
}

template <class V, int R>
void tap_rows(const typename V::Scalar* in, const int64_t* off, int64_t taps,
              const typename V::Scalar* w, int64_t ldw, const typename V::Scalar* bias,
              bool accumulate, bool relu, typename V::Scalar* out, int64_t ldo, int64_t count,
              const typename V::Scalar* res, int64_t ldr) {
  // res + q: null stays null (no residual).
  const auto res_at = [res](int64_t q) { return res ? res + q : nullptr; };
  constexpr int NV = vectors_for_rows<V, R>();
  constexpr int64_t L = V::kWidth;
  constexpr int64_t step = NV * L;
  // The last three vectors of a count that would end in a lone vector (see kPositionAlign).
  const int64_t lone_tail = count % (2 * L) == L && count >= 3 * L ? 3 * L : 0;
  const int64_t end = count - lone_tail;  // a multiple of 2 L when there is such a tail
  int64_t q = 0;
  for (; q + step <= end; q += step) {
    tap_block<V, R, NV>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo,
                        res_at(q), ldr);
  }
  for (; q + 2 * L <= end; q += 2 * L) {
    tap_block<V, R, 2>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo,
                       res_at(q), ldr);
  }
  for (; q < end; q += L) {
    tap_block<V, R, 1>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo,
                       res_at(q), ldr);
  }
  if (lone_tail) {
    tap_block_three<V, R>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo,
                          res_at(q), ldr);
  }
}

// f(std::integral_constant<int, R>{}) for R = rows: the row count as a template argument.
template <class F>
inline void with_row_count(int rows, F&& f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    default: return;  // the driver asks for 1..kMaxRows rows only
  }
}

// tap_rows with 512-bit vectors Z over the longest multiple of Z::kWidth positions and
// 256-bit ones Y (half as wide) over the rest: `count` is a multiple of Y's width only
// (kPositionAlign), so the rest is none or one Y vector; where there are three, a rest of one
// takes the last three instead, as in tap_rows.
template <class Z, class Y, int R>
void tap_rows_wide(const typename Z::Scalar* in, const int64_t* off, int64_t taps,
                   const typename Z::Scalar* w, int64_t ldw, const typename Z::Scalar* bias,
                   bool accumulate, bool relu, typename Z::Scalar* out, int64_t ldo,
                   int64_t count, const typename Z::Scalar* res, int64_t ldr) {
  static_assert(Z::kWidth == 2 * Y::kWidth, "Y is Z's half");
  constexpr int64_t LY = Y::kWidth;
  int64_t rest = count % Z::kWidth;
  if (rest != 0 && count >= 3 * LY) rest = 3 * LY;
  const int64_t q = count - rest;
  tap_rows<Z, R>(in, off, taps, w, ldw, bias, accumulate, relu, out, ldo, q, res, ldr);
  const typename Z::Scalar* res_q = res ? res + q : nullptr;
  if (rest == 3 * LY) {
    tap_block_three<Y, R>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo, res_q,
                          ldr);
  } else if (rest == LY) {
    tap_block<Y, R, 1>(in + q, off, taps, w, ldw, bias, accumulate, relu, out + q, ldo, res_q,
                       ldr);
  }
}

// tap_conv on vectors V; with Rest, a vector type half as wide (V of 512 bits, Rest of 256),
// V over the positions up to the last whole V vector and Rest past it (see tap_rows_wide).
template <class V, class Rest = V>
void tap_conv(const typename V::Scalar* in, const int64_t* off, int64_t taps,
              const typename V::Scalar* w, int64_t ldw, int rows,
              const typename V::Scalar* bias, bool accumulate, bool relu,
              typename V::Scalar* out, int64_t ldo, int64_t count,
              const typename V::Scalar* res, int64_t ldr) {
  with_row_count(rows, [&](auto r) {
    constexpr int R = decltype(r)::value;
    if constexpr (std::is_same_v<V, Rest>) {
      tap_rows<V, R>(in, off, taps, w, ldw, bias, accumulate, relu, out, ldo, count, res, ldr);
    } else {
      tap_rows_wide<V, Rest, R>(in, off, taps, w, ldw, bias, accumulate, relu, out, ldo, count,
                                res, ldr);
    }
  });
}

// ---------------------------------------------------------------------------- cv_conv
// The channel-vectorised micro-kernel (see CvConvFn): P positions times NV vectors of output
// channels (NV of a panel's cv_panel_vectors, from vector `first`) accumulated in registers while
// the taps stream by; each tap costs NV vector loads of packed weights and P broadcasts of input
// values for P * NV FMAs, as tap_block's R x NV. Positions are any P addresses, so no vector
// lane is spent on a position the output does not keep.
template <class V, int P, int NV>
inline void cv_block(const typename V::Scalar* in, const int64_t* off, int64_t taps,
                     const typename V::Scalar* wp, const int64_t* pos,
                     typename V::Scalar* out, const int64_t* opos, bool accumulate, int first) {
  using Reg = typename V::Reg;
  using T = typename V::Scalar;
  constexpr int L = V::kWidth;
  constexpr int kPanel = kCvPanelBytes / static_cast<int>(sizeof(T));
  Reg acc[P][NV];
  const T* base[P];
  T* dst[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    base[p] = in + pos[p];
    dst[p] = out + opos[p] + first * L;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[p][v] = accumulate ? V::load(dst[p] + v * L) : V::zero();
  }
  const T* w = wp + first * L;
  for (int64_t t = 0; t < taps; ++t, w += kPanel) {
    Reg wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) wv[v] = V::load(w + v * L);
    const int64_t o = off[t];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const Reg b = V::set1(base[p][o]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[p][v] = V::fma(b, wv[v], acc[p][v]);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) V::store(dst[p] + v * L, acc[p][v]);
  }
}

// Register blocks: P positions times NV vectors, P * NV accumulators, NV weights and a broadcast
// within the registers. With 32, a whole panel (NV = 4 256-bit or 2 512-bit vectors) for 6
// positions (12 with 512-bit vectors measured slower: 1.01-1.13x over 256-bit instead of
// 1.44-1.55x on stride-2 batch-32 layers). With 16, a panel in two halves of 2 vectors for 6
// positions (15 registers), the input values broadcast once per half: whole panels allow only 2
// positions, whose 8 accumulators are just the FMA latency times its throughput and which load
// 6 values per 8 FMAs; measured on the 2-core AVX2 EPYC (512-512 14x14 s2 r128, batch 32), that
// ran at ~53% of the FMA peak.
constexpr int kCvPositions = 6;
// A panel's vectors: kCvVectors of 256 bits, half as many of 512.
template <class V>
constexpr int cv_panel_vectors() {
  return kCvPanelBytes / static_cast<int>(V::kWidth * sizeof(typename V::Scalar));
}
template <class V>
constexpr int cv_block_vectors() {
  return V::kRegisters >= 32 ? cv_panel_vectors<V>() : 2;
}

// P <= kCvPositions positions over the whole panel, NV vectors at a time.
template <class V, int P>
inline void cv_panel(const typename V::Scalar* in, const int64_t* off, int64_t taps,
                     const typename V::Scalar* wp, const int64_t* pos,
                     typename V::Scalar* out, const int64_t* opos, bool accumulate) {
  constexpr int NV = cv_block_vectors<V>();
  constexpr int kVectors = cv_panel_vectors<V>();
  static_assert(kVectors % NV == 0, "a panel is whole register blocks");
#pragma GCC unroll 4
  for (int first = 0; first < kVectors; first += NV) {
    cv_block<V, P, NV>(in, off, taps, wp, pos, out, opos, accumulate, first);
  }
}

template <class V>
void cv_conv(const typename V::Scalar* in, const int64_t* off, int64_t taps,
             const typename V::Scalar* wp, const int64_t* pos, int64_t count,
             typename V::Scalar* out, const int64_t* opos, bool accumulate) {
  constexpr int P = kCvPositions;
  // A block of one position keeps too few FMAs in flight (as tap_conv's lone vector): a count
  // that would end in one runs its last P + 1 positions as two blocks instead (7 = 4 + 3).
  int64_t blocks = count / P;
  int64_t rest = count % P;
  if (rest == 1 && blocks > 0) {
    --blocks;
    rest += P;
  }
  int64_t q = 0;
  for (int64_t b = 0; b < blocks; ++b, q += P) {
    cv_panel<V, P>(in, off, taps, wp, pos + q, out, opos + q, accumulate);
  }
  while (rest > 0) {
    const int64_t n = rest > P ? rest - rest / 2 : rest;
    switch (n) {
#define TRP_FCONV_CV_TAIL(N)                                                     \
  case N:                                                                        \
    if constexpr (N <= P) {                                                      \
      cv_panel<V, N>(in, off, taps, wp, pos + q, out, opos + q, accumulate);     \
    }                                                                            \
    break;
      TRP_FCONV_CV_TAIL(1)
      TRP_FCONV_CV_TAIL(2)
      TRP_FCONV_CV_TAIL(3)
      TRP_FCONV_CV_TAIL(4)
      TRP_FCONV_CV_TAIL(5)
      TRP_FCONV_CV_TAIL(6)
#undef TRP_FCONV_CV_TAIL
      default:
        break;
    }
    q += n;
    rest -= n;
  }
}

// An L x L block transposed in registers (L = kWidth, a power of two): log2(L) rounds of the
// perfect shuffle, row 2i and 2i + 1 of each round the interleave of rows i and i + L / 2.
template <class V>
inline void transpose_block(typename V::Reg* r) {
  constexpr int L = V::kWidth;
  for (int round = 1; round < L; round *= 2) {
    typename V::Reg next[L];
#pragma GCC unroll 8
    for (int i = 0; i < L / 2; ++i) {
      V::interleave(r[i], r[i + L / 2], &next[2 * i], &next[2 * i + 1]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i) r[i] = next[i];
  }
}

// See CvOutputFn. Whole L x L blocks (L channels by L positions) transposed in registers where
// the output and residual run along the positions; the rest one value at a time.
template <class V>
void cv_output(const typename V::Scalar* src, int64_t ld, int64_t count, int64_t channels,
               const typename V::Scalar* bias, const typename V::Scalar* res, int64_t res_n,
               int64_t res_q, bool relu, typename V::Scalar* out, int64_t out_n, int64_t out_q) {
  using T = typename V::Scalar;
  constexpr int L = V::kWidth;
  const auto one = [&](int64_t n, int64_t q) {
    T v = src[q * ld + n] + (bias ? bias[n] : T(0));
    if (res) v += res[n * res_n + q * res_q];
    out[n * out_n + q * out_q] = relu && v < T(0) ? T(0) : v;
  };
  const bool blocks = out_q == 1 && (res == nullptr || res_q == 1);
  const int64_t whole_n = blocks ? channels / L * L : 0;
  const int64_t whole_q = blocks ? count / L * L : 0;
  for (int64_t n0 = 0; n0 < whole_n; n0 += L) {
    for (int64_t q0 = 0; q0 < whole_q; q0 += L) {
      typename V::Reg r[L];
#pragma GCC unroll 8
      for (int i = 0; i < L; ++i) r[i] = V::load(src + (q0 + i) * ld + n0);
      transpose_block<V>(r);  // r[j]: channel n0 + j at positions q0 ..
#pragma GCC unroll 8
      for (int j = 0; j < L; ++j) {
        typename V::Reg v = bias ? V::add(r[j], V::set1(bias[n0 + j])) : r[j];
        if (res) v = V::add(v, V::load(res + (n0 + j) * res_n + q0));
        V::store(out + (n0 + j) * out_n + q0, relu ? V::relu(v) : v);
      }
    }
    for (int64_t n = n0; n < n0 + L; ++n) {
      for (int64_t q = whole_q; q < count; ++q) one(n, q);
    }
  }
  for (int64_t n = whole_n; n < channels; ++n) {
    for (int64_t q = 0; q < count; ++q) one(n, q);
  }
}

// ---------------------------------------------------------------------------- layout
// Rows are short (7 to 60 values), so these avoid library calls and scalar loops: a run of n >=
// kWidth values ends with one vector that overlaps the previous one, a shorter run is one
// partial (masked) vector. They never write outside [dst, dst + n).
template <class V>
inline void copy_run(const typename V::Scalar* src, typename V::Scalar* dst, int64_t n) {
  constexpr int L = V::kWidth;
  if (n < L) {
    if (n > 0) V::store_partial(dst, V::load_partial(src, n), n);
    return;
  }
  int64_t k = 0;
  for (; k + L <= n; k += L) V::store(dst + k, V::load(src + k));
  if (k < n) V::store(dst + n - L, V::load(src + n - L));
}

// For build_planes: a run shorter than a vector is written as a whole vector whose extra lanes
// are zeros. They land in the row's right padding, the next row (padding, or data written
// later, as rows are filled in order) or the plane's gap: never on data already written.
template <class V>
inline void copy_run_spilling_zeros(const typename V::Scalar* src, typename V::Scalar* dst,
                                    int64_t n) {
  if (n < V::kWidth) {
    if (n > 0) V::store(dst, V::load_partial(src, n));
    return;
  }
  copy_run<V>(src, dst, n);
}

template <class V>
inline void zero_run_spilling_zeros(typename V::Scalar* dst, int64_t n) {
  for (int64_t k = 0; k < n; k += V::kWidth) V::store(dst + k, V::zero());
}

// Plane columns [first, end) of phase b hold source columns cc * sw + b - pw in [0, width);
// the other columns are padding.
inline int64_t phase_first(const PlaneSpec& s, int64_t b) {
  const int64_t need = s.pw - b;  // cc * sw >= pw - b
  const int64_t first = need <= 0 ? 0 : (need + s.sw - 1) / s.sw;
  return first < s.wq ? first : s.wq;
}
inline int64_t phase_end(const PlaneSpec& s, int64_t b, int64_t width) {
  const int64_t last = width - 1 + s.pw - b;  // cc * sw <= width - 1 + pw - b
  const int64_t end = last < 0 ? 0 : (last / s.sw + 1 < s.wq ? last / s.sw + 1 : s.wq);
  const int64_t first = phase_first(s, b);
  return end > first ? end : first;
}

// Fills the data columns of the planes of `s` (see BuildPlanesFn). Padding columns are only
// ever written with zeros (short runs spill zeros forward, see copy_run_spilling_zeros): the
// caller zeroes the buffer once per call, and as every band has the same layout they stay
// zero. Rows outside the source are data columns set to zero. Each plane's rows are filled in
// order, and every phase row of a source row before the next source row.
template <class V>
void build_planes(const typename V::Scalar* src, int64_t sc, int64_t sy, int64_t sx,
                  int64_t height, int64_t width, const PlaneSpec& s, int64_t row0,
                  typename V::Scalar* dst) {
  using T = typename V::Scalar;
  constexpr int L = V::kWidth;
  const int64_t plane = s.plane_size();
  for (int64_t b = 0; b < s.sw; ++b) {
    // Per phase, so the column range costs two divisions per call, not per row.
    const int64_t first = phase_first(s, b);
    const int64_t end = phase_end(s, b, width);
    const int64_t n = end - first;
    // Stride 2 from contiguous rows: both phases in one pass (below, at b == 0).
    const bool pair = s.sw == 2 && sx == 1;
    if (pair && b == 1) continue;
    const int64_t first1 = pair ? phase_first(s, 1) : 0;
    const int64_t end1 = pair ? phase_end(s, 1, width) : 0;
    if (n == 0 && end1 == first1) continue;
    for (int64_t i = 0; i < s.channels; ++i) {
      // Row phase innermost, so that the source rows are read in order (prefetch-friendly).
      // The last row is skipped: it is there for its left padding only (see PlaneSpec); its
      // data columns, never read by a valid output, stay as zeroed.
      for (int64_t rr = 0; rr + 1 < s.hb; ++rr) {
        for (int64_t a = 0; a < s.sh; ++a) {
          T* row = dst + ((i * s.sh + a) * s.sw + b) * plane + rr * s.wq;
          const int64_t y = (row0 + rr) * s.sh + a - s.ph;
          if (y < 0 || y >= height) {
            zero_run_spilling_zeros<V>(row + first, n);
            if (pair) zero_run_spilling_zeros<V>(row + plane + first1, end1 - first1);
            continue;
          }
          const T* line = src + i * sc + y * sy;
          if (s.sw == 1 && sx == 1) {
            copy_run_spilling_zeros<V>(line + first - s.pw, row + first, n);
          } else if (pair) {
            // 2 * L source values per step, split into even (phase 0) and odd (phase 1)
            // columns, over [lo, hi) where both phases hold data (a row shorter than 2 * L values
            // in one partial step); the
            // column or two left over one at a time.
            T* odd = row + plane;
            const int64_t lo = first > first1 ? first : first1;
            const int64_t hi = end < end1 ? end : end1;
            for (int64_t cc = lo; cc < hi; cc += L) {
              typename V::Reg e, o;
              if (hi - lo >= L) {
                cc = cc + L > hi ? hi - L : cc;  // the last step overlaps the one before
                const T* p = line + 2 * cc - s.pw;
                V::deinterleave(V::load(p), V::load(p + L), &e, &o);
                V::store(row + cc, e);
                V::store(odd + cc, o);
              } else {
                const T* p = line + 2 * cc - s.pw;
                const int64_t m = hi - cc;  // < L pairs
                const typename V::Reg head = 2 * m >= L ? V::load(p) : V::load_partial(p, 2 * m);
                const typename V::Reg tail =
                    2 * m > L ? V::load_partial(p + L, 2 * m - L) : V::zero();
                V::deinterleave(head, tail, &e, &o);  // lanes from m on are zeros
                V::store(row + cc, e);
                V::store(odd + cc, o);
              }
            }
            const int64_t done = hi > lo ? hi : lo;  // [lo, done) is written in both phases
            for (int64_t c = first; c < end; ++c) {
              if (c == lo) c = done;  // skip [lo, done)
              if (c < end) row[c] = line[2 * c - s.pw];
            }
            for (int64_t c = first1; c < end1; ++c) {
              if (c == lo) c = done;
              if (c < end1) odd[c] = line[2 * c + 1 - s.pw];
            }
          } else {
            for (int64_t cc = first; cc < end; ++cc) row[cc] = line[(cc * s.sw + b - s.pw) * sx];
          }
        }
      }
    }
  }
}

// dst[0, n) = act(src + res) over contiguous runs; as copy_run, a last partial vector is
// written as the run's last whole vector again (the same values: dst aliases neither input).
template <class V>
inline void add_run(const typename V::Scalar* src, const typename V::Scalar* res, bool relu,
                    typename V::Scalar* dst, int64_t n) {
  constexpr int L = V::kWidth;
  const auto sum = [&](int64_t k) {
    const typename V::Reg v = V::add(V::load(src + k), V::load(res + k));
    return relu ? V::relu(v) : v;
  };
  if (n < L) {
    if (n > 0) {
      const typename V::Reg v = V::add(V::load_partial(src, n), V::load_partial(res, n));
      V::store_partial(dst, relu ? V::relu(v) : v, n);
    }
    return;
  }
  int64_t k = 0;
  for (; k + L <= n; k += L) V::store(dst + k, sum(k));
  if (k < n) V::store(dst + n - L, sum(n - L));
}

template <class V>
void copy_rows(const typename V::Scalar* src, int64_t src_row, int64_t rows, int64_t cols,
               const typename V::Scalar* res, int64_t res_row, int64_t res_col, bool relu,
               typename V::Scalar* dst, int64_t dst_row, int64_t dst_col) {
  using Scalar = typename V::Scalar;
  for (int64_t r = 0; r < rows; ++r) {
    const Scalar* s = src + r * src_row;
    Scalar* d = dst + r * dst_row;
    if (res == nullptr) {
      if (dst_col == 1) {
        copy_run<V>(s, d, cols);
      } else {
        for (int64_t c = 0; c < cols; ++c) d[c * dst_col] = s[c];
      }
      continue;
    }
    const Scalar* e = res + r * res_row;
    if (dst_col == 1 && res_col == 1) {
      add_run<V>(s, e, relu, d, cols);
    } else {  // channels_last output, or a residual broadcast along the width
      for (int64_t c = 0; c < cols; ++c) {
        const Scalar v = s[c] + e[c * res_col];
        d[c * dst_col] = relu && v < Scalar(0) ? Scalar(0) : v;
      }
    }
  }
}

// ---------------------------------------------------------------------------- Winograd
// F(2, 3) on the data: B^T d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
template <class V>
inline void winograd_b(typename V::Reg d0, typename V::Reg d1, typename V::Reg d2,
                       typename V::Reg d3, typename V::Reg* r) {
  r[0] = V::sub(d0, d2);
  r[1] = V::add(d1, d2);
  r[2] = V::sub(d2, d1);
  r[3] = V::sub(d1, d3);
}

// F(2, 3) on a filter: G g = (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), half = 0.5.
template <class V>
inline void winograd_g(typename V::Reg g0, typename V::Reg g1, typename V::Reg g2,
                       typename V::Reg half, typename V::Reg* r) {
  r[0] = g0;
  r[1] = V::mul(V::add(V::add(g0, g1), g2), half);
  r[2] = V::mul(V::add(V::sub(g0, g1), g2), half);
  r[3] = g2;
}

// The second pass of V = B^T d B for one tile row: B^T along the rows of `rows` (the first
// pass's 4 rows of wq values, B^T d down the columns), vectorised over kWidth tiles, whose patch
// columns 2 tx + j are the even (j = 0, 2) and odd (j = 1, 3) values of two runs.
template <class V>
inline void winograd_input_rows(const typename V::Scalar* rows, int64_t wq, int64_t vectors,
                                typename V::Scalar* out, int64_t point_stride) {
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  for (int64_t k = 0; k < 4; ++k) {
    const typename V::Scalar* row = rows + k * wq;
    for (int64_t u = 0; u < vectors; ++u) {
      const typename V::Scalar* run = row + 2 * L * u;
      Reg c0, c1, c2, c3, r[4];
      V::deinterleave(V::load(run), V::load(run + L), &c0, &c1);
      V::deinterleave(V::load(run + 2), V::load(run + 2 + L), &c2, &c3);
      winograd_b<V>(c0, c1, c2, c3, r);
      for (int m = 0; m < 4; ++m) V::store(out + (k * 4 + m) * point_stride + L * u, r[m]);
    }
  }
}

// V = B^T d B for every 4 x 4 patch of a band of tile rows, from zero-padded planes (see
// WinogradInputFn). Along the columns first, vectorised over plane columns; then along the
// rows (winograd_input_rows). A tile row's last vector may run past its tiles: those lanes land
// on the next tile row's first tiles (written after them) or in the slack after the last.
template <class V>
void winograd_input(const typename V::Scalar* planes, int64_t plane_stride, int64_t wq,
                    int64_t channels, int64_t tile_rows, int64_t tiles_w,
                    typename V::Scalar* v, int64_t channel_stride, int64_t point_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const int64_t vectors = (tiles_w + L - 1) / L;
  T rows[4 * kWinogradMaxPlaneWidth];  // B^T d of one tile row: rows[k * wq + column]
  for (int64_t c = 0; c < channels; ++c) {
    const T* plane = planes + c * plane_stride;
    for (int64_t ty = 0; ty < tile_rows; ++ty) {
      const T* d = plane + 2 * ty * wq;
      for (int64_t col = 0; col < wq; col += L) {
        Reg r[4];
        winograd_b<V>(V::load(d + col), V::load(d + wq + col), V::load(d + 2 * wq + col),
                      V::load(d + 3 * wq + col), r);
        for (int k = 0; k < 4; ++k) V::store(rows + k * wq + col, r[k]);
      }
      winograd_input_rows<V>(rows, wq, vectors, v + c * channel_stride + ty * tiles_w,
                             point_stride);
    }
  }
}

// The same from rows of `width` consecutive values where they are (see WinogradInputDirectFn):
// padded column j of a row is its value j - pw, zero outside [0, width) and for rows outside
// [0, height), loaded by masks that read nothing outside the row.
template <class V>
void winograd_input_direct(const typename V::Scalar* src, int64_t sc, int64_t sy,
                           int64_t height, int64_t row0, int64_t pw, int64_t width, int64_t wq,
                           int64_t channels, int64_t tile_rows, int64_t tiles_w,
                           typename V::Scalar* v, int64_t channel_stride, int64_t point_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const int64_t vectors = (tiles_w + L - 1) / L;
  T rows[4 * kWinogradMaxPlaneWidth];
  const auto load = [&](const T* row, int64_t col) {
    if (row == nullptr) return V::zero();
    const int64_t lo = pw - col > 0 ? pw - col : 0;  // lanes [lo, hi) hold the row's values
    const int64_t hi = width + pw - col < L ? width + pw - col : L;
    if (lo == 0 && hi == L) return V::load(row + col - pw);
    if (hi <= lo) return V::zero();
    return V::load_window(row + col - pw, lo, hi);
  };
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t ty = 0; ty < tile_rows; ++ty) {
      const T* d[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t y = row0 + 2 * ty + k;
        d[k] = y >= 0 && y < height ? src + c * sc + y * sy : nullptr;
      }
      for (int64_t col = 0; col < wq; col += L) {
        Reg r[4];
        winograd_b<V>(load(d[0], col), load(d[1], col), load(d[2], col), load(d[3], col), r);
        for (int k = 0; k < 4; ++k) V::store(rows + k * wq + col, r[k]);
      }
      winograd_input_rows<V>(rows, wq, vectors, v + c * channel_stride + ty * tiles_w,
                             point_stride);
    }
  }
}

// U = G g G^T for `filters` 3 x 3 filters g (9 values each, one after another, as in a (r, c,
// 3, 3) weight), G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]: point xi of filter f at
// u[xi * point_stride + f]. Vectorised over kWidth filters at a time, each group's 9 x kWidth
// values first transposed through a buffer, kWinogradWeightGroups groups at once: a vector
// load of values stored one by one just before waits for every store to retire (it cannot be
// forwarded), which took ~75% of the transform's time when each group read back its own
// transposition at once (perf, 128 x 128 filters).
constexpr int64_t kWinogradWeightGroups = 8;
template <class V>
void winograd_weights(const typename V::Scalar* w, int64_t filters, typename V::Scalar* u,
                      int64_t point_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const Reg half = V::set1(T(0.5));
  T taps[kWinogradWeightGroups][9][L];
  for (int64_t chunk = 0; chunk < filters; chunk += kWinogradWeightGroups * L) {
    const int64_t left = filters - chunk < kWinogradWeightGroups * L ? filters - chunk
                                                                     : kWinogradWeightGroups * L;
    const int64_t groups = (left + L - 1) / L;
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t f0 = chunk + group * L;
      const int64_t n = filters - f0 < L ? filters - f0 : L;
      const T* src = w + f0 * 9;
      for (int64_t i = 0; i < n; ++i) {
        for (int e = 0; e < 9; ++e) taps[group][e][i] = src[i * 9 + e];
      }
      for (int64_t i = n; i < L; ++i) {
        for (int e = 0; e < 9; ++e) taps[group][e][i] = T(0);
      }
    }
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t f0 = chunk + group * L;
      const int64_t n = filters - f0 < L ? filters - f0 : L;
      Reg gg[3][4];  // G g, along the kernel rows: gg[kx][i]
      for (int kx = 0; kx < 3; ++kx) {
        winograd_g<V>(V::load(taps[group][kx]), V::load(taps[group][3 + kx]),
                      V::load(taps[group][6 + kx]), half, gg[kx]);
      }
      for (int i = 0; i < 4; ++i) {  // (G g) G^T, along the kernel columns
        Reg point[4];
        winograd_g<V>(gg[0][i], gg[1][i], gg[2][i], half, point);
        for (int m = 0; m < 4; ++m) {
          T* dst = u + (i * 4 + m) * point_stride + f0;
          if (n == L) {
            V::store(dst, point[m]);
          } else {
            V::store_partial(dst, point[m], n);
          }
        }
      }
    }
  }
}

// Y = A^T M A, A^T m = (m0 + m1 + m2, m1 - m2 - m3), along the columns, then the rows,
// vectorised over kWidth tiles of a tile row; each of a tile's output rows is written as the
// interleaved (dx = 0, dx = 1) values, so that Y comes out in image order. A tile row's last
// vector may run past its tiles: those lanes read the next tile row's products (or the padding
// after the last) and land on the start of the next image row, which is written after them
// (rows go in order), or past the last row.
template <class V>
void winograd_output(const typename V::Scalar* m, int64_t rows, int64_t count,
                     int64_t point_stride, int64_t tile_rows, int64_t tiles_w,
                     typename V::Scalar* y, int64_t pitch, int64_t row_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const int64_t vectors = (tiles_w + L - 1) / L;
  // Image rows strictly in order (each row's vectors before the next row's), so that a spill
  // is always overwritten.
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t ty = 0; ty < tile_rows; ++ty) {
      for (int dy = 0; dy < 2; ++dy) {
        T* out = y + j * row_stride + (2 * ty + dy) * pitch;
        for (int64_t u = 0; u < vectors; ++u) {
          const T* in = m + j * count + ty * tiles_w + L * u;
          Reg s[4];  // row dy of A^T M
          for (int c = 0; c < 4; ++c) {
            const Reg m0 = V::load(in + (0 + c) * point_stride);
            const Reg m1 = V::load(in + (4 + c) * point_stride);
            const Reg m2 = V::load(in + (8 + c) * point_stride);
            const Reg m3 = V::load(in + (12 + c) * point_stride);
            s[c] = dy == 0 ? V::add(V::add(m0, m1), m2) : V::sub(V::sub(m1, m2), m3);
          }
          const Reg left = V::add(V::add(s[0], s[1]), s[2]);
          const Reg right = V::sub(V::sub(s[1], s[2]), s[3]);
          Reg first, second;
          V::interleave(left, right, &first, &second);
          V::store(out + 2 * L * u, first);
          V::store(out + 2 * L * u + L, second);
        }
      }
    }
  }
}

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext

// Along one axis: uses winograd_b and winograd_g.
#include "cpu/factored_conv2d_kernels_axis_impl.h"
