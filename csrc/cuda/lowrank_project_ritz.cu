// The Rayleigh-Ritz step's own kernels on the GPU (common/ritz_residuals.h), one block per
// matrix: H made symmetric (or zero) before the eigensolver, the residuals and the rank rule's
// rows after it. Their CPU twins are in cpu/lowrank_project_batched_twins.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/batch_tensor_checks.h"
#include "common/ritz_residuals.h"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    symmetrize_kernel(double* __restrict__ h, int64_t b, const bool* __restrict__ usable) {
  const int64_t matrix = blockIdx.x;
  double* hm = h + matrix * b * b;
  const bool on = usable[matrix];
  // Each pair {i, j} by the one thread that meets it with i <= j.
  for (int64_t idx = threadIdx.x; idx < b * b; idx += kThreads) {
    const int64_t i = idx / b, j = idx % b;
    if (i <= j) symmetrize_entry(hm, b, i, j, on);
  }
}

__global__ void __launch_bounds__(kThreads)
    ritz_residuals_kernel(const double* __restrict__ gu, const double* __restrict__ u,
                          const double* __restrict__ theta, const double* __restrict__ total,
                          int64_t k, int64_t b, double* __restrict__ res2, double* __restrict__ rows) {
  const int64_t matrix = blockIdx.x;
  const double* t = theta + matrix * b;
  for (int64_t c = threadIdx.x; c < b; c += kThreads) {
    res2[matrix * b + c] = ritz_residual2(gu + matrix * k * b, u + matrix * k * b, t, k, b, c);
  }
  if (threadIdx.x == 0) ritz_rank_row(t, b, k, total[matrix], rows + matrix * (b + 1));
}

}  // namespace

void symmetrize_ritz_matrices(const at::Tensor& h, const at::Tensor& usable) {
  check_ritz_matrices(h, usable, c10::DeviceType::CUDA);
  const int64_t batch = h.size(0), b = h.size(1);
  TORCH_CHECK(batch <= 2147483647LL, "symmetrize_ritz_matrices: too many matrices for one launch");
  if (batch == 0 || b == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  symmetrize_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(h.data_ptr<double>(), b,
                                                                           usable.const_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ritz_residuals(const at::Tensor& gu, const at::Tensor& u, const at::Tensor& theta,
                    const at::Tensor& total, const at::Tensor& res2, const at::Tensor& rows) {
  check_ritz_residuals(gu, u, theta, total, res2, rows, c10::DeviceType::CUDA);
  const int64_t batch = gu.size(0), k = gu.size(1), b = gu.size(2);
  TORCH_CHECK(batch <= 2147483647LL, "ritz_residuals: too many matrices for one launch");
  if (batch == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ritz_residuals_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      gu.const_data_ptr<double>(), u.const_data_ptr<double>(), theta.const_data_ptr<double>(),
      total.const_data_ptr<double>(), k, b, res2.data_ptr<double>(), rows.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace trp_ext
