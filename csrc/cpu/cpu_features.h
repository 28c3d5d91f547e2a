// Which instruction set the CPU kernels run with, decided once per process for all of them.
#pragma once

namespace trp_ext {
namespace cpu {

// Whether the AVX2+FMA builds of the CPU kernels may run: the CPU has both, and ATen's CPU
// capability allows AVX2. ATEN_CPU_CAPABILITY=default lowers that capability, so the one
// setting switches the portable code on in every trp_ext kernel, as it does in ATen's own.
bool use_avx2_fma();

// "avx2" or "portable": what use_avx2_fma() chose (reported by trp_ext._C.cpu_kernels()).
const char* cpu_kernel_isa();

}  // namespace cpu
}  // namespace trp_ext
