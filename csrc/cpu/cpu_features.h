// Which instruction set the CPU kernels run with, decided once per process for all of them.
#pragma once

namespace trp_ext {
namespace cpu {

// Whether the AVX2+FMA builds of the CPU kernels may run: the CPU has both, and ATen's CPU
// capability allows AVX2. ATEN_CPU_CAPABILITY=default lowers that capability, so the one
// setting switches the portable code on in every trp_ext kernel, as it does in ATen's own.
bool use_avx2_fma();

// Whether the AVX-512VL build of the factored_conv2d kernels may run (the micro-kernel that
// small_gemm shares included): use_avx2_fma(), the CPU has AVX-512F and AVX-512VL, and ATen's
// capability is AVX512 (ATEN_CPU_CAPABILITY=avx2 switches it off, as it does ATen's own).
bool use_avx512vl();

// "avx512", "avx2" or "portable": the widest of those that may run (reported by
// trp_ext._C.cpu_kernels()). The other CPU kernels use AVX2 under "avx512".
const char* cpu_kernel_isa();

}  // namespace cpu
}  // namespace trp_ext
