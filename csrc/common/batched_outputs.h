// The last step of the batched lowrank_project (lowrank_project_batched.cpp): every output of a
// call (projections, sub-gradients, bases) copied from its part's float64 batch into its own
// tensor, in the matrices' dtype and orientation, in one launch (cuda/lowrank_project_outputs.cu,
// and its CPU twin in cpu/lowrank_project_batched_twins.cpp).
#pragma once

#include <cstdint>

namespace trp_ext {

// One output: element (r, c) of the contiguous (rows, cols) destination reads the float64 at
// src + r * row_stride + c * col_stride (a matrix stored transposed reads its part swapped).
struct OutputJob {
  int64_t src, row_stride, col_stride;
  int64_t dst, rows, cols;
};
constexpr int64_t kOutputJobWords = sizeof(OutputJob) / sizeof(int64_t);
static_assert(sizeof(OutputJob) == 6 * sizeof(int64_t), "OutputJob travels as 6 int64 words");

}  // namespace trp_ext
