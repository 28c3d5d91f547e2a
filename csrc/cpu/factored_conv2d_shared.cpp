// See cpu/factored_conv2d_shared.h.
#include "cpu/factored_conv2d_shared.h"

#include "cpu/cpu_features.h"
#include "cpu/factored_conv2d_path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

namespace {

// 512-bit loops only where they measured at least this much faster than 256-bit ones: ~2 on
// cores with two 512-bit FMA units, ~1 on cores that split them.
constexpr double kWideSpeedup = 1.5;

struct KernelChoice {
  CpuKernels narrow;          // 256-bit vectors: AVX-512VL, AVX2 or portable
  CpuKernels wide;            // 512-bit multiply-add loops; null kernels without AVX-512
  bool wide_faster = false;   // auto's choice (measured once per process)
};

const KernelChoice& kernel_choice() {
  static const KernelChoice choice = [] {
    KernelChoice c;
    if (cpu::use_avx512vl()) {
      c.narrow = avx512_kernels();
      c.wide = avx512_wide_kernels();
      if (c.wide.f32.tap_conv != nullptr) c.wide_faster = avx512_fma_speedup() >= kWideSpeedup;
    }
    if (c.narrow.f32.tap_conv == nullptr && cpu::use_avx2_fma()) c.narrow = avx2_kernels();
    if (c.narrow.f32.tap_conv == nullptr) c.narrow = portable_kernels();
    return c;
  }();
  return choice;
}

}  // namespace

const CpuKernels& cpu_kernels() {
  const KernelChoice& choice = kernel_choice();
  if (choice.wide.f32.tap_conv != nullptr) {
    const PathMode mode = wide_switch().get();
    if (mode == PathMode::kAlways || (mode == PathMode::kAuto && choice.wide_faster)) {
      return choice.wide;
    }
  }
  return choice.narrow;
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
PathSwitch& wide_switch() {
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
