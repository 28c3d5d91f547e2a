// The CPU twins of the CUDA lowrank_project's own kernels (cuda/lowrank_project_kernels.cuh):
// the same algorithms on the same shared steps (common/jacobi_rotation.h, common/ritz_batch.h),
// so that the batched algorithm (lowrank_project_batched.h) runs on the CPU as it runs on a GPU.
#pragma once

#include "lowrank_project_batched.h"

namespace trp_ext {
namespace cpu {

// jacobi_eigh, certify_ritz_batch and gap_basis_widths on CPU tensors; no batched eigensolver
// (the CUDA kernel's path where cuSOLVER lacks one: torch.linalg.eigh past the Jacobi sizes).
const BatchedKernels& batched_twin_kernels();

// The CUDA Jacobi eigensolver's twin, as lowrank_project_batched.h's BatchedKernels::jacobi_eigh
// describes it, on contiguous CPU tensors.
void jacobi_eigh_twin(const at::Tensor& matrices, const at::Tensor& values,
                      const at::Tensor& vectors, const at::Tensor& converged);

}  // namespace cpu
}  // namespace trp_ext
