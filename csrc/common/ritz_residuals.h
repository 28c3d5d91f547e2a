// The Rayleigh-Ritz step of the batched lowrank_project's warm starts around its eigensolver, per
// matrix: H = Q^T G Q made exactly symmetric (zero where the warm start is off), and after it the
// squared residuals ||G u_j - theta_j u_j||^2 and the values the rank rule reads. The CUDA kernels
// (cuda/lowrank_project_ritz.cu) and their CPU twins (cpu/lowrank_project_batched_twins.cpp) share
// the per-entry code below.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace trp_ext {

// Entries (i, j) and (j, i), i <= j, of H (b x b, row-major) made symmetric, or zeroed where the
// matrix's warm start is off (`usable` false), as ATen's (H + H^T) / 2 and where(ok, H, 0) did.
TRP_HOST_DEVICE inline void symmetrize_entry(double* h, int64_t b, int64_t i, int64_t j, bool usable) {
  const double v = usable ? (h[i * b + j] + h[j * b + i]) * 0.5 : 0.0;
  h[i * b + j] = v;
  h[j * b + i] = v;
}

// Squared residual of Ritz pair c: sum over rows of (G u - theta u)^2, G u and u (k x b row-major).
TRP_HOST_DEVICE inline double ritz_residual2(const double* gu, const double* u, const double* theta,
                                             int64_t k, int64_t b, int64_t c) {
  double sum = 0.0;
  for (int64_t r = 0; r < k; ++r) {
    const double d = gu[r * b + c] - u[r * b + c] * theta[c];
    sum += d * d;
  }
  return sum;
}

// The rank rule's row (b + 1 values) of a matrix: its singular values estimated from the Ritz
// values, then the energy outside span(Q) (total - their sum, where b < k) lumped as one more.
TRP_HOST_DEVICE inline void ritz_rank_row(const double* theta, int64_t b, int64_t k, double total,
                                          double* row) {
  double captured = 0.0;
  for (int64_t c = 0; c < b; ++c) {
    const double value = theta[c] < 0.0 ? 0.0 : theta[c];  // NaN stays NaN, as clamp_min
    captured += value;
    row[c] = sqrt(value);
  }
  const double tail = b < k ? total - captured : 0.0;
  row[b] = sqrt(tail < 0.0 ? 0.0 : tail);
}

}  // namespace trp_ext
