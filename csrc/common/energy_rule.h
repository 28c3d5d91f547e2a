// The energy rank rule, shared by the CPU kernels: the smallest r with
// sum(s[:r]^2) >= energy * sum(s^2), accumulated in double.
#pragma once

#include <cmath>
#include <cstdint>

namespace trp_ext {

// Returns the rank of one row of n values, or -1 if a value is NaN or Inf.
template <typename T>
inline int64_t energy_rank_of_row(const T* s, int64_t n, double energy) {
  double total = 0.0;
  int64_t last_nonzero = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(s[i]);
    if (!std::isfinite(v)) return -1;
    total += v * v;
    if (v != 0.0) last_nonzero = i;
  }
  if (total == 0.0) return 0;
  const double target = energy * total;
  double cumulative = 0.0;
  for (int64_t i = 0; i <= last_nonzero; ++i) {
    const double v = static_cast<double>(s[i]);
    cumulative += v * v;
    if (cumulative >= target) return i + 1;
  }
  // Reached only if the two passes rounded differently (e.g. FMA contraction in one loop):
  // the whole row then holds the energy.
  return last_nonzero + 1;
}

}  // namespace trp_ext
