// The custom CUDA kernels of lowrank_project (launchers; the kernels themselves sit in anonymous
// namespaces of their .cu files): the BatchedKernels of lowrank_project_batched.h. Everything
// else in the CUDA path is batched ATen work.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "lowrank_project_batched.h"

namespace trp_ext {
namespace cuda {

// The load step (common/batched_load.h), one block per matrix: BatchedKernels::load_matrices and
// finish_grams (lowrank_project_batched.h) on CUDA tensors.
void load_matrices(const at::Tensor& jobs, bool from_double, double value_threshold,
                   const at::Tensor& stats, const at::Tensor& flags);
void finish_grams(const at::Tensor& jobs, const at::Tensor& gram_fro2);

// The warm starts' starting blocks (common/batched_bases.h), one block per matrix:
// BatchedKernels::load_bases on CUDA tensors.
void load_bases(const at::Tensor& jobs, bool from_double, const at::Tensor& flags,
                const at::Tensor& ok);

// The outputs (common/batched_outputs.h), one block per output: BatchedKernels::write_outputs on
// CUDA tensors.
void write_outputs(const at::Tensor& jobs, bool to_double, int64_t largest);

// The Rayleigh-Ritz step's kernels (common/ritz_residuals.h), one block per matrix:
// BatchedKernels::symmetrize_ritz_matrices and ritz_residuals on CUDA tensors.
void symmetrize_ritz_matrices(const at::Tensor& h, const at::Tensor& usable);
void ritz_residuals(const at::Tensor& gu, const at::Tensor& u, const at::Tensor& theta,
                    const at::Tensor& total, const at::Tensor& res2, const at::Tensor& rows);

// Cholesky QR (common/cholesky_qr.h), one block per matrix: BatchedKernels::cholesky_qr_fits
// and cholesky_qr on CUDA tensors.
bool cholesky_qr_fits(int64_t b);
void cholesky_qr(const at::Tensor& q, const at::Tensor& previous, const at::Tensor& out,
                 const at::Tensor& ok);

// Whether the shared-memory Jacobi eigensolver takes n x n matrices: n <= kJacobiMaxSize
// (common/jacobi_rotation.h), in the running device's shared memory.
bool jacobi_eigh_fits(int64_t n);

// Eigen-decomposition of a batch of symmetric n x n float64 matrices (B, n, n), one block per
// matrix, by cyclic Jacobi with a parallel (round-robin) ordering in shared memory. Writes
// values (B, n) descending, vectors (B, n, n) (column j belongs to values[:, j]) and converged
// (B) int32 (0 if the sweep limit was reached first). Requires jacobi_eigh_fits(n).
void jacobi_eigh(const at::Tensor& matrices, const at::Tensor& values, const at::Tensor& vectors,
                 const at::Tensor& converged);

// One thread per matrix: writes rank (B) int64 and status (B) int32 (a RitzStatus).
void certify_ritz_batch(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status);

// The widths of the bases to return (common/lowrank_project_policy.h's gap_basis_width, one
// thread per matrix): values (B, w) float64, descending eigenvalues (or Ritz values) of the Gram
// matrices of size k; rank (B) int64. Returns (B) int64.
at::Tensor gap_basis_widths(const at::Tensor& values, const at::Tensor& rank, int64_t k);

}  // namespace cuda
}  // namespace trp_ext
