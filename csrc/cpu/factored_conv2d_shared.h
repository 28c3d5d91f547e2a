// What the two CPU drivers of factored_conv2d share: the kernels of this CPU and the blocking
// of output rows for the micro-kernel.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/factored_conv2d_kernels.h"

namespace trp_ext {
namespace fconv_cpu {

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The AVX2+FMA kernels when cpu::use_avx2_fma() allows them, else the portable ones.
const CpuKernels& cpu_kernels();

template <typename T>
const KernelSet<T>& kernels_for();
template <>
inline const KernelSet<float>& kernels_for<float>() {
  return cpu_kernels().f32;
}
template <>
inline const KernelSet<double>& kernels_for<double>() {
  return cpu_kernels().f64;
}

// Splits `rows` into near-equal blocks of at most kMaxRows: (first row, size) pairs.
std::vector<std::pair<int64_t, int>> row_blocks(int64_t rows);

}  // namespace fconv_cpu
}  // namespace trp_ext
