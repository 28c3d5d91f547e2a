// A cache-friendly transposing copy, shared by the CPU lowrank_project kernel's loads and its
// small GEMM.
#pragma once

#include <algorithm>
#include <cstdint>

namespace trp_ext {
namespace cpu {

// dst[j * dst_stride + i] = src[i * cols + j] (converted to Dst) for the row-major rows x cols
// src, in 16 x 16 tiles that stay in L1 both ways (a column-order copy of a 1024-deep matrix
// ran at a third of the speed).
template <typename Src, typename Dst>
void transpose_tiled(const Src* src, int64_t rows, int64_t cols, Dst* dst, int64_t dst_stride) {
  constexpr int64_t kTile = 16;
  for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
    for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
      for (int64_t j = j0; j < std::min(cols, j0 + kTile); ++j) {
        for (int64_t i = i0; i < std::min(rows, i0 + kTile); ++i) {
          dst[j * dst_stride + i] = static_cast<Dst>(src[i * cols + j]);
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace trp_ext
