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

bool use_avx512vl() {
  static const bool allowed = [] {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    return use_avx2_fma() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") && at::get_cpu_capability() == "AVX512";
#else
    return false;
#endif
  }();
  return allowed;
}

const char* cpu_kernel_isa() {
  if (use_avx512vl()) return "avx512";
  return use_avx2_fma() ? "avx2" : "portable";
}

}  // namespace cpu
}  // namespace trp_ext
