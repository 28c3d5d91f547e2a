// The first step of the batched lowrank_project's warm starts (lowrank_project_batched.cpp): every
// warm-started group's starting blocks Q in one launch (cuda/lowrank_project_bases.cu, and its CPU
// twin in cpu/lowrank_project_batched_twins.cpp). A matrix's Q holds its given basis, padded to
// its group's width with deterministic pseudo-random columns; a matrix without a usable basis
// (none given, NaN or Inf in it or in the matrix) gets pseudo-random columns only, and is not ok.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace trp_ext {

// One matrix of a warm-started group. Basis element (i, c) is at src + i * row_stride + c *
// col_stride (the matrices' dtype); Q element (i, c) goes to dst + i * b + c.
struct BasisJob {
  int64_t src, row_stride, col_stride;
  int64_t width;         // the basis's columns (0: none given)
  int64_t dst, k, b;     // the matrix's (k, b) block of its group's Q
  int64_t noise_offset;  // the block's first element in its group's (B, k, b) Q: seeds the noise
  int64_t flag_row;      // its column in the call's flags table (common/batched_load.h)
  int64_t ok_index;      // its entry in the call's `ok` vector
};
constexpr int64_t kBasisJobWords = sizeof(BasisJob) / sizeof(int64_t);
static_assert(sizeof(BasisJob) == 10 * sizeof(int64_t), "BasisJob travels as 10 int64 words");

// Deterministic pseudo-random entry in [-1, 1) for element `index` of a group's Q: the classic
// shader hash frac(sin(x * 12.9898 + 78.233) * 43758.5453), as separate roundings. CUDA's sin is
// not correctly rounded, so a GPU's padding differs from the CPU twin's by ~1e-11: the columns
// only need to be generic.
TRP_HOST_DEVICE inline double pseudo_random_entry(int64_t index) {
  const double x = static_cast<double>(index);
#ifdef __CUDA_ARCH__
  const double y = __dmul_rn(sin(__dadd_rn(__dmul_rn(x, 12.9898), 78.233)), 43758.5453);
  return __dsub_rn(__dmul_rn(y - trunc(y), 2.0), 1.0);
#else
  const double y = std::sin(x * 12.9898 + 78.233) * 43758.5453;
  return (y - std::trunc(y)) * 2.0 - 1.0;
#endif
}

}  // namespace trp_ext
