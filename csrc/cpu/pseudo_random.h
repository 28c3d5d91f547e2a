// Reproducible pseudo-random numbers for the CPU kernels (splitmix64): start vectors of inverse
// iteration and the columns a widened warm-start basis adds. Reproducible, so that a call gives
// the same result every time, and thread-safe (the caller owns the state).
#pragma once

#include <cstdint>

namespace trp_ext {
namespace cpu {

// A number in [-1, 1); advances *state.
inline double random_unit(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0;
}

}  // namespace cpu
}  // namespace trp_ext
