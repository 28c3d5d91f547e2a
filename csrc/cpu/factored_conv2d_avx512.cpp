// The AVX-512 builds of the factored_conv2d CPU kernels.
//
// avx512_kernels: the AVX2 code (256-bit vectors, the same instructions) compiled with
// AVX-512VL, whose EVEX encodings reach 32 vector registers instead of 16, so that the
// micro-kernel keeps twice the accumulators per tap (see vectors_for_rows). Measured on the
// bench's 60 layer shapes (2-core AMD EPYC with AVX-512, calls alternating between this build and
// the AVX2 one in one process): faster on every shape, 1.00-1.22x, median 1.075x.
//
// avx512_wide_kernels: the same, but the two multiply-add loops (tap_conv, cv_conv) on 512-bit
// vectors. CPUs differ here: AMD Zen 4 splits a 512-bit FMA into two 256-bit halves (no gain),
// while Intel's server cores with two 512-bit FMA units run twice the 256-bit multiply-adds per
// cycle (measured on a 2-core Intel Xeon VM: 236 against 116 GFLOP/s a core), where oneDNN's
// 512-bit convs left our 256-bit kernels at up to half its speed. So avx512_fma_speedup measures
// the CPU once per process, and factored_conv2d_shared.cpp picks the wide build where it pays.
//
// As in factored_conv2d_avx2.cpp: a target pragma for this file's functions only, standard
// headers before it, internal linkage under it, and called only after a run-time CPU check.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <type_traits>

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
#include "cpu/factored_conv2d_x86_zmm.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

using Avx512VlF32 = YmmF32<32>;
using Avx512VlF64 = YmmF64<32>;

// Seconds for `rounds` rounds of 10 independent multiply-add chains of V's vectors: enough
// chains to fill two FMA units at a latency of 4-5 cycles, with nothing else in the loop.
template <class V>
double fma_chain_seconds(int64_t rounds) {
  using Reg = typename V::Reg;
  const Reg b = V::set1(0.999f), c = V::set1(1e-6f);
  Reg a0 = V::set1(0.5f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
      a8 = a0, a9 = a0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) {
    a0 = V::fma(a0, b, c);
    a1 = V::fma(a1, b, c);
    a2 = V::fma(a2, b, c);
    a3 = V::fma(a3, b, c);
    a4 = V::fma(a4, b, c);
    a5 = V::fma(a5, b, c);
    a6 = V::fma(a6, b, c);
    a7 = V::fma(a7, b, c);
    a8 = V::fma(a8, b, c);
    a9 = V::fma(a9, b, c);
    // Keeps the chains in registers and the loop from being folded away.
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                     "+v"(a7), "+v"(a8), "+v"(a9));
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count();
}

double wide_fma_speedup() {
  // ~30 us a measurement at two 256-bit FMAs a cycle. A first 512-bit pass wakes the wide units
  // (Intel runs them slower for some microseconds after idling); the best of five of each then
  // keeps a moment of noise on this shared machine from deciding.
  constexpr int64_t kRounds = 20000;
  fma_chain_seconds<ZmmF32>(kRounds);
  double narrow = 1e30, wide = 1e30;
  for (int i = 0; i < 5; ++i) {
    narrow = std::min(narrow, fma_chain_seconds<Avx512VlF32>(kRounds));
    wide = std::min(wide, fma_chain_seconds<ZmmF32>(kRounds));
  }
  // Twice the lanes per instruction: the ratio of multiply-adds per second.
  return wide > 0.0 ? 2.0 * narrow / wide : 1.0;
}

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

CpuKernels avx512_wide_kernels() {
#ifdef TRP_FCONV_HAVE_AVX512
  CpuKernels k = kernel_table<Avx512VlF32, Avx512VlF64>("avx512");
  k.f32.tap_conv = &tap_conv<ZmmF32, Avx512VlF32>;
  k.f64.tap_conv = &tap_conv<ZmmF64, Avx512VlF64>;
  k.f32.cv_conv = &cv_conv<ZmmF32>;
  k.f64.cv_conv = &cv_conv<ZmmF64>;
  k.vector_bits = 512;
  return k;
#else
  return CpuKernels{};
#endif
}

double avx512_fma_speedup() {
#ifdef TRP_FCONV_HAVE_AVX512
  return wide_fma_speedup();
#else
  return 1.0;
#endif
}

}  // namespace fconv_cpu
}  // namespace trp_ext
