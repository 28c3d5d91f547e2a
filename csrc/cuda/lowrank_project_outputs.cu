// The batched lowrank_project's outputs on the GPU (common/batched_outputs.h): one block per
// output tensor, reading its part's float64 batch with the job's strides and writing the
// contiguous output in the matrices' dtype. Its CPU twin is in
// cpu/lowrank_project_batched_twins.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "common/batch_tensor_checks.h"
#include "common/batched_outputs.h"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Elements of the largest output one block takes: larger ones are spread over blockIdx.y.
constexpr int64_t kElementsPerBlock = 16 * kThreads;
constexpr int64_t kMaxSlices = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads) write_outputs_kernel(const OutputJob* __restrict__ jobs) {
  const OutputJob job = jobs[blockIdx.x];
  const double* src = reinterpret_cast<const double*>(job.src);
  T* dst = reinterpret_cast<T*>(job.dst);
  const int64_t stride = static_cast<int64_t>(gridDim.y) * kThreads;
  for (int64_t idx = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x; idx < job.rows * job.cols;
       idx += stride) {
    const int64_t r = idx / job.cols, c = idx % job.cols;
    dst[idx] = static_cast<T>(src[r * job.row_stride + c * job.col_stride]);
  }
}

}  // namespace

void write_outputs(const at::Tensor& jobs, bool to_double, int64_t largest) {
  check_output_jobs(jobs, c10::DeviceType::CUDA);
  const int64_t count = jobs.size(0);
  TORCH_CHECK(count <= 2147483647LL, "write_outputs: too many outputs for one launch");
  if (count == 0) return;
  const OutputJob* job = reinterpret_cast<const OutputJob*>(jobs.const_data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t slices = std::min(kMaxSlices, std::max<int64_t>(1, (largest + kElementsPerBlock - 1) / kElementsPerBlock));
  const dim3 grid(static_cast<unsigned>(count), static_cast<unsigned>(slices));
  if (to_double) {
    write_outputs_kernel<double><<<grid, kThreads, 0, stream>>>(job);
  } else {
    write_outputs_kernel<float><<<grid, kThreads, 0, stream>>>(job);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace trp_ext
