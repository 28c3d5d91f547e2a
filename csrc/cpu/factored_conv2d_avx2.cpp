// The AVX2+FMA build of the factored_conv2d CPU kernels. The rest of the extension is compiled
// for the baseline instruction set, so this file switches AVX2 on for its own functions only (a
// target pragma, not a global -mavx2), and the driver calls them only after checking the CPU at
// run time. Standard headers are included before the pragma: inline functions they define must
// not be compiled for AVX2, or the linker could hand that copy to code running on a CPU
// without it. Everything compiled under the pragma has internal linkage.
#include <cstdint>
#include <type_traits>

#include "cpu/factored_conv2d_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TRP_FCONV_HAVE_AVX2 1
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "cpu/factored_conv2d_kernels_impl.h"
#include "cpu/factored_conv2d_x86_vectors.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

using Avx2F32 = YmmF32<16>;
using Avx2F64 = YmmF64<16>;

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#include "cpu/factored_conv2d_kernel_table.h"
#endif  // x86-64 with GCC or Clang

namespace trp_ext {
namespace fconv_cpu {

// Only takes addresses: nothing compiled for AVX2 runs here, so any CPU may call it.
CpuKernels avx2_kernels() {
#ifdef TRP_FCONV_HAVE_AVX2
  return kernel_table<Avx2F32, Avx2F64>("avx2");
#else
  return CpuKernels{};
#endif
}

}  // namespace fconv_cpu
}  // namespace trp_ext
