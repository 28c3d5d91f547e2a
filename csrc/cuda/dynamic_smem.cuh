// Opting kernels in to more than 48 KiB of dynamic shared memory, once per kernel, device and size.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

namespace trp_ext {
namespace cuda_util {

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device. Above the
// default 48 KiB that takes cudaFuncSetAttribute, a driver call that would otherwise run on
// every launch (a measurable share of a small layer's batch-1 time); the attribute belongs to the
// kernel on one device and a raised limit also serves smaller launches, so it is set only when a
// launch needs more than this kernel was given on this device before.
inline void allow_dynamic_smem(const void* kernel, size_t bytes) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> raised;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  size_t& limit = raised[{kernel, device}];
  if (limit >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  limit = bytes;
}

}  // namespace cuda_util
}  // namespace trp_ext
