// The energy rank rule, shared by the CPU and CUDA kernels: the smallest r with
// sum(s[:r]^2) >= energy * sum(s^2), accumulated in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace trp_ext {

// acc + v * v with the product rounded before the sum, as the reference's cumsum(s * s) does. On
// the GPU the intrinsics keep nvcc from fusing them into one multiply-add, whose single rounding
// could move the first index that reaches the target, and so the rank, at a tie.
TRP_HOST_DEVICE inline double add_square(double acc, double v) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(acc, __dmul_rn(v, v));
#else
  return acc + v * v;
#endif
}

TRP_HOST_DEVICE inline bool finite_value(double v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Rows whose largest magnitude lies outside 2^+-500 are scaled by a power of two before
// squaring: squares of float64 values past ~1e154 overflow the sums (a row of 1e200s got rank 1
// at energy 0.9), and below ~1e-154 they underflow. Other rows are not touched, so their sums
// are those of the reference's cumsum(s * s) to the bit.
TRP_HOST_DEVICE inline double scaled_value(double v, int exponent) {
#ifdef __CUDA_ARCH__
  return exponent == 0 ? v : ldexp(v, -exponent);
#else
  return exponent == 0 ? v : std::ldexp(v, -exponent);
#endif
}

// Returns the rank of one row of n values, or -1 if a value is NaN or Inf. The CPU kernels and
// the CUDA energy_rank kernel (one thread per row) both run this function.
template <typename T>
TRP_HOST_DEVICE inline int64_t energy_rank_of_row(const T* s, int64_t n, double energy) {
  double largest = 0.0, total = 0.0;
  int64_t last_nonzero = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(s[i]);
    if (!finite_value(v)) return -1;
    const double magnitude = v < 0.0 ? -v : v;
    largest = magnitude > largest ? magnitude : largest;
    total = add_square(total, v);
    if (v != 0.0) last_nonzero = i;
  }
  if (largest == 0.0) return 0;
  int exponent = 0;
  if (largest > 0x1p500 || largest < 0x1p-500) {  // the sum above over- or underflowed: again, scaled
#ifdef __CUDA_ARCH__
    frexp(largest, &exponent);
#else
    std::frexp(largest, &exponent);
#endif
    total = 0.0;
    for (int64_t i = 0; i < n; ++i) total = add_square(total, scaled_value(static_cast<double>(s[i]), exponent));
  }
  const double target = energy * total;
  double cumulative = 0.0;
  for (int64_t i = 0; i <= last_nonzero; ++i) {
    cumulative = add_square(cumulative, scaled_value(static_cast<double>(s[i]), exponent));
    if (cumulative >= target) return i + 1;
  }
  // Reached only if the two passes rounded differently (a host compiler free to contract one
  // loop into multiply-adds): the whole row then holds the energy.
  return last_nonzero + 1;
}

}  // namespace trp_ext
