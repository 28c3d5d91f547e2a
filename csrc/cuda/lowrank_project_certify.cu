// The per-matrix rules of batched results, one thread per matrix running the CPU kernel's own
// code (common/ritz_batch.h): certify_ritz (common/ritz_certificate.h), so both devices accept a
// warm result under exactly the same bounds, and gap_basis_width
// (common/lowrank_project_policy.h), so both return bases of the same widths.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/ritz_batch.h"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__global__ void certify_kernel(RitzArgs args, int64_t* __restrict__ rank_out,
                               int* __restrict__ status_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < args.count) certify_batch_member(args, i, rank_out, status_out);
}

__global__ void gap_width_kernel(int64_t count, int64_t w, int64_t k, const double* __restrict__ values,
                                 const int64_t* __restrict__ rank, int64_t* __restrict__ width_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) gap_width_of_member(i, w, k, values, rank, width_out);
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

}  // namespace

void certify_ritz_batch(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status) {
  const RitzArgs args = ritz_args(batch, rank, status, c10::DeviceType::CUDA);
  if (args.count == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  certify_kernel<<<blocks_for(args.count), kThreads, 0, stream>>>(args, rank.data_ptr<int64_t>(),
                                                                  status.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gap_basis_widths(const at::Tensor& values, const at::Tensor& rank, int64_t k) {
  check_gap_width_args(values, rank, c10::DeviceType::CUDA);
  const int64_t count = values.size(0), w = values.size(1);
  at::Tensor width = at::empty({count}, rank.options());
  if (count == 0) return width;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  gap_width_kernel<<<blocks_for(count), kThreads, 0, stream>>>(
      count, w, k, values.const_data_ptr<double>(), rank.const_data_ptr<int64_t>(),
      width.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return width;
}

}  // namespace cuda
}  // namespace trp_ext
