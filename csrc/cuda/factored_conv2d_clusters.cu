// See cuda/factored_conv2d_launch.cuh: the thread-block cluster queries of the launches, shared by
// every dtype's translation unit (their caches are process-wide).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "cuda/factored_conv2d_launch.cuh"

namespace trp_ext {
namespace fconv_launch {

bool clusters_supported(const void* kernel, const cudaDeviceProp& props) {
  if (props.major < 9) return false;
  // Per device: a process with two kinds of GPU may run sm_90 code on one and PTX of an older
  // arch, JIT-compiled, on the other.
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, bool> compiled;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  const auto found = compiled.find(key);
  if (found != compiled.end()) return found->second;
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  return compiled[key] = attributes.ptxVersion >= 90;
}

cudaLaunchConfig_t cluster_config(dim3 grid, int split, size_t smem, cudaStream_t stream,
                                  cudaLaunchAttribute* attribute) {
  *attribute = cudaLaunchAttribute{};
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = static_cast<unsigned>(split);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(fconv_cuda::kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

bool cluster_fits(const void* kernel, int split, size_t smem, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, size_t>, bool> known;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, device, split, smem);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      cluster_config(dim3(static_cast<unsigned>(split)), split, smem, stream, &attribute);
  int clusters = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
  return known[key] = clusters > 0;
}

}  // namespace fconv_launch
}  // namespace trp_ext
