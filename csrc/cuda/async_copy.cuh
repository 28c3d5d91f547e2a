// 16-byte copies from global to shared memory that need not wait for their data: cp.async on
// sm_80 and later (issued, then awaited by group), a plain load and store before (complete at
// once, so the waits are no-ops). A caller makes the copied data visible to the other threads
// of its block with __syncthreads() after its wait, as after any shared-memory store.
#pragma once

#include <cuda_runtime.h>

namespace trp_ext {
namespace cuda_util {

// Copies 16 bytes from `src` to `dst` (both 16-byte aligned), or writes 16 zero bytes when
// `valid` is false; `src` is then never read, but must still be a valid global address.
__device__ __forceinline__ void copy16_async(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned shared_address = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int src_bytes = valid ? 16 : 0;  // the rest of the 16 bytes is zero-filled
  // .cg: through L2 only; the operands are read once per block.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(src),
               "r"(src_bytes)
               : "memory");
#else
  *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

// Closes the group of copies this thread issued since the last commit.
__device__ __forceinline__ void commit_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `kPending` of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

}  // namespace cuda_util
}  // namespace trp_ext
