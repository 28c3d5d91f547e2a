// Cholesky QR of a batch of k x b blocks, as the batched lowrank_project's warm starts use it:
// twice X <- X L^-T with L L^T = X^T X, then a check that X^T X = I. The CUDA kernel
// (cuda/lowrank_project_qr.cu, one block per matrix) and its CPU twin
// (cpu/lowrank_project_batched_twins.cpp) share the constants and the per-row solve below.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace trp_ext {

// Widest block taken: X^T X and its factor (b x b float64) sit in shared memory on CUDA,
// 128 KiB at this width (jacobi-style opt-in; cholesky_qr_fits also checks the device).
constexpr int64_t kCholeskyQrMaxWidth = 128;
constexpr int kCholeskyQrPasses = 2;
// The result counts as orthonormal while max |X^T X - I| stays at or below this: the warm
// start's certificate assumes an orthonormal basis.
constexpr double kOrthonormalTol = 1e-10;

// A power step's columns are scaled to unit norm before the QR (they track Ritz vectors, so the
// block is then nearly orthonormal); a column whose norm is at or below this fraction of the
// largest keeps its previous direction (its eigenvalues hold no energy worth resolving).
constexpr double kStagnantColumn = 1e-12;

// The largest of n column norms, NaN if one is NaN (as ATen's amax).
TRP_HOST_DEVICE inline double largest_norm(const double* norms, int64_t n) {
  double largest = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    const double v = norms[c];
    if (v != v || largest != largest) {
      largest = v != v ? v : largest;
    } else if (v > largest) {
      largest = v;
    }
  }
  return largest;
}

// Entry (r, c) of the normalised block: z / norm, or the previous block's entry where the column
// stagnated. norm below DBL_MIN divides by DBL_MIN (and NaN stays NaN), as ATen's clamp_min.
TRP_HOST_DEVICE inline double normalised_entry(double z, double previous, double norm, double largest) {
  if (norm <= kStagnantColumn * largest) return previous;
  return z / (norm < DBL_MIN ? DBL_MIN : norm);
}

// Row x (b values) <- x L^-T, by forward substitution with the lower factor L (leading
// dimension ld): y L^T = x means L y^T = x^T.
TRP_HOST_DEVICE inline void solve_row_with_factor(const double* lower, int64_t ld, int64_t b,
                                                  double* x) {
  for (int64_t j = 0; j < b; ++j) {
    double v = x[j];
    for (int64_t l = 0; l < j; ++l) v -= x[l] * lower[j * ld + l];
    x[j] = v / lower[j * ld + j];
  }
}

}  // namespace trp_ext
