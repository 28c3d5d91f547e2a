// Which instruction set the CPU kernels run with (see cpu_features.h).
#include "cpu/cpu_features.h"

#include <ATen/Version.h>

#include <string>

namespace trp_ext {
namespace cpu {

bool use_avx2_fma() {
  static const bool allowed = [] {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
    const std::string capability = at::get_cpu_capability();
    return capability == "AVX2" || capability == "AVX512";
#else
    return false;
#endif
  }();
  return allowed;
}

const char* cpu_kernel_isa() { return use_avx2_fma() ? "avx2" : "portable"; }

}  // namespace cpu
}  // namespace trp_ext
