// The batched algorithm of lowrank_project: the whole list in a fixed number of batched steps
// (see the .cpp). The CUDA kernel is this algorithm on the GPU's own kernels; the CPU runs it on
// their C++ twins (cpu/lowrank_project_batched_twins.h) when the cpu_batched_projection switch
// says "always", so that the tests check the CUDA kernel's algorithm where no GPU is.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace trp_ext {

// Inputs of certify_ritz (common/ritz_certificate.h) for a batch of Rayleigh-Ritz results, all
// float64 on the matrices' device unless noted: theta (B, b) descending, res2 (B, b),
// gram_fro2, total, value_cut2 (< 0: none), sub_floor (the sub-gradient's floor, a fraction of
// s_1) (B each), energy_rank (B) int64, usable
// (B) bool (false: the basis or the eigensolver failed; status kRitzNeedCold).
struct RitzBatch {
  int64_t k = 0, b = 0;
  at::Tensor theta, res2, gram_fro2, total, value_cut2, sub_floor, energy_rank, usable;
  int64_t max_rank = -1;
  bool want_subgradient = false;
  double tol_rank = 0.0, tol_proj = 0.0, tol_sub = 0.0;
};

// The device's own kernels the batched algorithm calls; everything else is batched ATen work.
struct BatchedKernels {
  // Every matrix of the call, one job a matrix (`jobs`: (count, kLoadJobWords) int64 rows of
  // common/batched_load.h's LoadJob, on the device): written as float64 into its group's batch,
  // rescaled, zero where it holds NaN or Inf; flags (kFlagRows, count) int32 gets its column of
  // common/batched_load.h's LoadFlags, and `stats` (kStatsRows, count) float64 its per-matrix
  // values (but the Gram norms).
  void (*load_matrices)(const at::Tensor& jobs, bool from_double, double value_threshold,
                        const at::Tensor& stats, const at::Tensor& flags);
  // Each job's Gram matrix made exactly symmetric ((G + G^T) / 2) and its squared Frobenius
  // norm into gram_fro2 (count) float64.
  void (*finish_grams)(const at::Tensor& jobs, const at::Tensor& gram_fro2);
  // The warm starts' starting blocks Q of every warm-started group (`jobs`: (count,
  // kBasisJobWords) int64 rows of common/batched_bases.h's BasisJob): the given basis, padded with
  // pseudo-random columns, or pseudo-random columns only; writes the NaN/Inf-in-basis row of
  // `flags` (the call's (kFlagRows, n) int32 table, whose NaN/Inf-in-matrix row it reads) and
  // ok[job.ok_index] = a basis was given and neither it nor the matrix holds NaN or Inf.
  void (*load_bases)(const at::Tensor& jobs, bool from_double, const at::Tensor& flags,
                     const at::Tensor& ok);
  // Every output of the call (`jobs`: (count, kOutputJobWords) int64 rows of
  // common/batched_outputs.h's OutputJob) from its float64 source, as float64 or float32;
  // `largest`: the most elements of one output (a GPU spreads large ones over several blocks).
  void (*write_outputs)(const at::Tensor& jobs, bool to_double, int64_t largest);
  // The Rayleigh-Ritz step around the eigensolver (common/ritz_residuals.h): h (B, b, b)
  // float64 made symmetric in place, zero where usable (B) bool is false; then from G U, U (B, k,
  // b), theta (B, b) and total (B): res2 (B, b) and the rank rule's rows (B, b + 1).
  void (*symmetrize_ritz_matrices)(const at::Tensor& h, const at::Tensor& usable);
  void (*ritz_residuals)(const at::Tensor& gu, const at::Tensor& u, const at::Tensor& theta,
                         const at::Tensor& total, const at::Tensor& res2, const at::Tensor& rows);
  // Whether cholesky_qr takes blocks b columns wide on the current device (else ATen's
  // composition runs).
  bool (*cholesky_qr_fits)(int64_t b);
  // Cholesky QR of each (k, b) block of q (B, k, b) float64, contiguous, into out (the same
  // shape), as common/cholesky_qr.h describes; ok (B) bool &= the factorisations succeeded and the
  // result is orthonormal. With `previous` (defined, q's shape), q's columns are first scaled to
  // unit norm, stagnant ones replaced by previous's (a power step's normalisation).
  void (*cholesky_qr)(const at::Tensor& q, const at::Tensor& previous, const at::Tensor& out,
                      const at::Tensor& ok);
  // Whether jacobi_eigh takes symmetric matrices of size n on the current device.
  bool (*jacobi_eigh_fits)(int64_t n);
  // Eigen-decomposition of a batch of symmetric n x n float64 matrices (B, n, n), contiguous,
  // by cyclic Jacobi: values (B, n) descending, vectors (B, n, n) (column j belongs to
  // values[:, j]), converged (B) int32 (0 if the sweep limit came first).
  void (*jacobi_eigh)(const at::Tensor& matrices, const at::Tensor& values,
                      const at::Tensor& vectors, const at::Tensor& converged);
  // One certify_ritz per matrix: rank (B) int64 and status (B) int32 (a RitzStatus).
  void (*certify_ritz_batch)(const RitzBatch& batch, const at::Tensor& rank,
                             const at::Tensor& status);
  // gap_basis_width (common/lowrank_project_policy.h) per matrix: values (B, w) float64
  // descending, rank (B) int64; returns (B) int64.
  at::Tensor (*gap_basis_widths)(const at::Tensor& values, const at::Tensor& rank, int64_t k);
  // A one-call batched eigensolver for the matrices past jacobi_eigh (values ascending, info 0
  // where it converged), or nullptr; returning false leaves the batch to torch.linalg.eigh.
  bool (*batched_eigh)(const at::Tensor& sym, at::Tensor& values, at::Tensor& vectors,
                       at::Tensor& info);
};

// lowrank_project (the op's schema and contract) by the batched algorithm on `kernels`, on the
// matrices' device; the caller holds the device guard.
std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
lowrank_project_batched(at::TensorList mats, double energy, std::optional<double> value_threshold,
                        std::optional<int64_t> max_rank, std::optional<at::TensorList> bases,
                        bool want_subgradient, const BatchedKernels& kernels);

}  // namespace trp_ext
