// CUDA kernel of lowrank_project: the batched algorithm (lowrank_project_batched.cpp) on the
// GPU's own kernels (the load steps, Cholesky QR, the Jacobi eigensolver, the certificate and
// the basis widths) and
// cuSOLVER's batched eigensolver for the Gram matrices past the Jacobi kernel.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/path_switch.h"
#include "cuda/cusolver_batched_eigh.h"
#include "cuda/lowrank_project_kernels.cuh"
#include "lowrank_project_batched.h"

namespace trp_ext {
namespace {

// cusolverDnXsyevBatched where the library has it and the switch allows it.
bool switched_batched_eigh(const at::Tensor& sym, at::Tensor& values, at::Tensor& vectors,
                           at::Tensor& info) {
  return cuda_batched_eigh_switch().get() != PathMode::kNever &&
         cuda::cusolver_batched_eigh(sym, values, vectors, info);
}

constexpr BatchedKernels kCudaKernels{cuda::load_matrices,      cuda::finish_grams,
                                      cuda::load_bases,         cuda::write_outputs,
                                      cuda::symmetrize_ritz_matrices, cuda::ritz_residuals,
                                      cuda::cholesky_qr_fits,   cuda::cholesky_qr,
                                      cuda::jacobi_eigh_fits,   cuda::jacobi_eigh,
                                      cuda::certify_ritz_batch, cuda::gap_basis_widths,
                                      switched_batched_eigh};

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
lowrank_project_cuda(at::TensorList mats, double energy, std::optional<double> value_threshold,
                     std::optional<int64_t> max_rank, std::optional<at::TensorList> bases,
                     bool want_subgradient) {
  // The checks first: the guard below reads mats[0], which an empty list does not have.
  std::optional<c10::cuda::CUDAGuard> device_guard;
  if (!mats.empty()) device_guard.emplace(mats[0].device());
  return lowrank_project_batched(mats, energy, value_threshold, max_rank, bases, want_subgradient,
                                 kCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(trp_ext, CUDA, m) { m.impl("lowrank_project", &lowrank_project_cuda); }

}  // namespace trp_ext
