// The AVX-512 build of the factored_conv2d CPU kernels: the AVX2 code (256-bit vectors, the
// same instructions) compiled with AVX-512VL, whose EVEX encodings reach 32 vector registers
// instead of 16, so that the micro-kernel keeps twice the accumulators per tap (see
// vectors_for_rows). 512-bit vectors would double the position granularity (kPositionAlign)
// and bring nothing else on CPUs that split them into two 256-bit halves (AMD Zen 4).
// Measured on the bench's 60 layer shapes (2-core AMD EPYC with AVX-512, calls alternating
// between this build and the AVX2 one in one process): faster on every shape, 1.00-1.22x,
// median 1.075x.
// As in factored_conv2d_avx2.cpp: a target pragma for this file's functions only, standard
// headers before it, internal linkage under it, and called only after a run-time CPU check.
#include <cstdint>

#include "cpu/factored_conv2d_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TRP_FCONV_HAVE_AVX512 1
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512vl"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl")
#endif

#include "cpu/factored_conv2d_kernels_impl.h"
#include "cpu/factored_conv2d_x86_vectors.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

using Avx512VlF32 = YmmF32<32>;
using Avx512VlF64 = YmmF64<32>;

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

// Only takes addresses: nothing compiled for AVX-512 runs here, so any CPU may call it.
CpuKernels avx512_kernels() {
#ifdef TRP_FCONV_HAVE_AVX512
  return kernel_table<Avx512VlF32, Avx512VlF64>("avx512");
#else
  return CpuKernels{};
#endif
}

}  // namespace fconv_cpu
}  // namespace trp_ext
