// The custom CUDA kernels of lowrank_project (launchers; the kernels themselves sit in anonymous
// namespaces of their .cu files). Everything else in the CUDA path is batched ATen work.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace trp_ext {
namespace cuda {

// Largest matrix the shared-memory Jacobi eigensolver takes: A and V in float64 with a padded
// leading dimension, 2 * 112 * 113 * 8 bytes = 198 KiB, within the 227 KiB a block may opt in to
// on sm_90. jacobi_eigh_fits() also checks the running device.
constexpr int64_t kJacobiMaxSize = 112;
bool jacobi_eigh_fits(int64_t n);

// Eigen-decomposition of a batch of symmetric n x n float64 matrices (B, n, n), one block per
// matrix, by cyclic Jacobi with a parallel (round-robin) ordering in shared memory. Writes
// values (B, n) descending, vectors (B, n, n) (column j belongs to values[:, j]) and converged
// (B) int32 (0 if the sweep limit was reached first). Requires jacobi_eigh_fits(n).
void jacobi_eigh(const at::Tensor& matrices, const at::Tensor& values, const at::Tensor& vectors,
                 const at::Tensor& converged);

// Inputs of certify_ritz (common/ritz_certificate.h) for a batch of Rayleigh-Ritz results, all
// float64 on the device unless noted: theta (B, b) descending, res2 (B, b), gram_fro2, total,
// value_cut2 (< 0: none), sub_floor2 (B each), energy_rank (B) int64, usable (B) bool (false:
// the basis or the eigensolver failed; status kRitzNeedCold).
struct RitzBatch {
  int64_t k = 0, b = 0;
  at::Tensor theta, res2, gram_fro2, total, value_cut2, sub_floor2, energy_rank, usable;
  int64_t max_rank = -1;
  bool want_subgradient = false;
  double tol_rank = 0.0, tol_proj = 0.0, tol_sub = 0.0;
};

// One thread per matrix: writes rank (B) int64 and status (B) int32 (a RitzStatus).
void certify_ritz_batch(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status);

// The widths of the bases to return (common/lowrank_project_policy.h's gap_basis_width, one
// thread per matrix): values (B, w) float64, descending eigenvalues (or Ritz values) of the Gram
// matrices of size k; rank (B) int64. Returns (B) int64.
at::Tensor gap_basis_widths(const at::Tensor& values, const at::Tensor& rank, int64_t k);

}  // namespace cuda
}  // namespace trp_ext
