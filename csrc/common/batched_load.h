// The load step of the batched lowrank_project (lowrank_project_batched.cpp): every matrix of a
// call, of any group, in one kernel launch (cuda/lowrank_project_load.cu, and its CPU twin in
// cpu/lowrank_project_batched_twins.cpp). Each matrix is described by a LoadJob; the kernels read
// it, write the matrix as float64 into its group's zero-padded batch, rescaled by powers of two,
// and its per-matrix values into the columns of one stats table. A second launch symmetrises the
// Gram matrices the groups' bmm made from them and writes their squared norms.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"
#include "common/lowrank_project_policy.h"

namespace trp_ext {

// One matrix, oriented A (k x len, k the shorter side): element (i, l) is at src + i * row_stride
// + l * col_stride (elements of the input's dtype, any strides), and goes to dst + i *
// padded_len + l, the columns from len to padded_len written as zeros. Addresses as integers, so
// that the table travels to the device as one int64 tensor.
struct LoadJob {
  int64_t src, row_stride, col_stride, k, len, padded_len;
  int64_t dst;   // the matrix's (k, padded_len) block of its group's float64 batch
  int64_t gram;  // its (k, k) Gram matrix, which bmm fills between the two launches
  int64_t row;   // its column index in the stats table (matrices of a group are consecutive)
  double sub_floor, noise_factor, svd_tolerance;  // from its shape (host-computed), copied
};
constexpr int64_t kLoadJobWords = sizeof(LoadJob) / sizeof(int64_t);
static_assert(sizeof(LoadJob) == 12 * sizeof(int64_t), "LoadJob travels as 12 int64 words");

// Rows of the (kStatsRows, count) float64 stats table: each row, narrowed to a group's columns,
// is a contiguous per-matrix vector of that group.
enum LoadStats : int64_t {
  kStatScaleLo = 0,    // the two power-of-two factors the matrix was multiplied by
  kStatScaleHi,
  kStatTotal,          // ||A||_F^2 after scaling
  kStatValueCut,       // value_threshold in the units of A; -1 where none was given
  kStatValueCut2,      // its square (-1 where none)
  kStatSubFloor,       // the LoadJob's three shape-derived values
  kStatNoiseFactor,
  kStatSvdTolerance,
  kStatGramFro2,       // ||G||_F^2 (finish_grams)
  kStatsRows
};

TRP_HOST_DEVICE inline double power_of_two(int e) {
#ifdef __CUDA_ARCH__
  return ldexp(1.0, e);
#else
  return std::ldexp(1.0, e);
#endif
}

// Rows of the (kFlagRows, count) int32 flags table, read by the host in one piece.
enum LoadFlags : int64_t {
  kFlagBad = 0,     // NaN or Inf in the matrix (it was loaded as zeros)
  kFlagBadBasis,    // NaN or Inf in its warm-start basis (0 until a warm start looks)
  kFlagZero,        // the matrix is zero
  kFlagStatus,      // its warm start's RitzStatus; -1 until a certificate writes it
  kFlagRows
};

// Column `row` of the flags table for a loaded matrix.
TRP_HOST_DEVICE inline void write_load_flags(int64_t row, int32_t* flags, int64_t count, bool finite,
                                             double total) {
  flags[kFlagBad * count + row] = finite ? 0 : 1;
  flags[kFlagBadBasis * count + row] = 0;
  flags[kFlagZero * count + row] = total == 0.0 ? 1 : 0;
  flags[kFlagStatus * count + row] = -1;
}

// The factors 2^lo and 2^hi (lo + hi = -exponent of max|a|) that bring a matrix whose largest
// magnitude lies outside 2^+-kMaxUnscaledExponent inside it; 1 and 1 otherwise (and for 0). In
// two factors, since 2^-exponent alone overflows for subnormal-only matrices; each multiplication
// by one is exact.
TRP_HOST_DEVICE inline void rescale_factors(double max_abs, double* scale_lo, double* scale_hi) {
  int exponent = 0;
#ifdef __CUDA_ARCH__
  frexp(max_abs, &exponent);
#else
  std::frexp(max_abs, &exponent);
#endif
  if (exponent > kMaxUnscaledExponent || exponent < -kMaxUnscaledExponent) {
    // -exponent / 2 rounded down, then the rest: exact small integers, so exp2 is exact too.
    const int lo = -exponent >= 0 ? -exponent / 2 : -((exponent + 1) / 2);
    *scale_lo = power_of_two(lo);
    *scale_hi = power_of_two(-exponent - lo);
  } else {
    *scale_lo = 1.0;
    *scale_hi = 1.0;
  }
}

// value_threshold (< 0: none) in the units of the scaled matrix, one factor at a time as the
// matrix (2^lo * 2^hi alone overflows for subnormal-only ones), and its square; -1 for none.
TRP_HOST_DEVICE inline void value_cuts(double value_threshold, double scale_lo, double scale_hi,
                                       double* cut, double* cut2) {
  if (value_threshold < 0.0) {
    *cut = -1.0;
    *cut2 = -1.0;
    return;
  }
  *cut = (scale_lo * value_threshold) * scale_hi;
  *cut2 = *cut * *cut;
}

// The per-matrix values of a loaded matrix, into column `row` of the (kStatsRows, count) table.
TRP_HOST_DEVICE inline void write_load_stats(const LoadJob& job, double* stats, int64_t count,
                                             double value_threshold, double scale_lo,
                                             double scale_hi, double total) {
  double* column = stats + job.row;
  column[kStatScaleLo * count] = scale_lo;
  column[kStatScaleHi * count] = scale_hi;
  column[kStatTotal * count] = total;
  value_cuts(value_threshold, scale_lo, scale_hi, &column[kStatValueCut * count],
             &column[kStatValueCut2 * count]);
  column[kStatSubFloor * count] = job.sub_floor;
  column[kStatNoiseFactor * count] = job.noise_factor;
  column[kStatSvdTolerance * count] = job.svd_tolerance;
}

// Entry (i, j) of (G + G^T) / 2, from G_ij and G_ji: bmm may round the two differently.
TRP_HOST_DEVICE inline double symmetric_entry(double gij, double gji) { return (gij + gji) * 0.5; }

}  // namespace trp_ext
