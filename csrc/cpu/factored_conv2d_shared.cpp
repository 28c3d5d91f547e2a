// See cpu/factored_conv2d_shared.h.
#include "cpu/factored_conv2d_shared.h"

#include "cpu/cpu_features.h"
#include "cpu/factored_conv2d_path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

const CpuKernels& cpu_kernels() {
  static const CpuKernels kernels = [] {
    if (cpu::use_avx512vl()) {
      const CpuKernels avx512 = avx512_kernels();
      if (avx512.f32.tap_conv != nullptr) return avx512;
    }
    if (cpu::use_avx2_fma()) {
      const CpuKernels avx2 = avx2_kernels();
      if (avx2.f32.tap_conv != nullptr) return avx2;
    }
    return portable_kernels();
  }();
  return kernels;
}

PathSwitch& winograd_switch() {
  static PathSwitch path;
  return path;
}
PathSwitch& cv_switch() {
  static PathSwitch path;
  return path;
}
PathSwitch& split_switch() {
  static PathSwitch path;
  return path;
}

RowBlocks row_blocks(int64_t rows) {
  RowBlocks blocks;
  if (rows == 0) return blocks;
  const int64_t count = ceil_div(rows, kMaxRows);
  int64_t start = 0;
  for (int64_t b = 0; b < count; ++b) {
    const int size = static_cast<int>(rows / count + (b < rows % count ? 1 : 0));
    blocks.emplace_back(start, size);
    start += size;
  }
  return blocks;
}

}  // namespace fconv_cpu
}  // namespace trp_ext
