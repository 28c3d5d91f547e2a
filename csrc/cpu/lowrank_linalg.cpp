// Dense float64 building blocks of the CPU lowrank_project kernel (see lowrank_linalg.h).
#include "cpu/lowrank_linalg.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/simd.h"

namespace trp_ext {
namespace cpu {
namespace {

at::Tensor view(const double* data, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<double*>(data), {rows, cols}, at::TensorOptions(at::kDouble));
}

// s = L L^T in place (lower triangle of the row-major n x n s). Returns false on a pivot that is
// not safely positive, i.e. numerically dependent columns; spread: max/min pivot^2.
bool cholesky_in_place(double* s, int64_t n, double* spread) {
  double lo = INFINITY, hi = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    double* row_j = s + j * n;
    const double d = row_j[j] - simd::sum_squares(row_j, j);
    if (!(d > 1e-12 * row_j[j]) || !(d > 0.0)) return false;
    const double pivot = std::sqrt(d);
    row_j[j] = pivot;
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    const double inv = 1.0 / pivot;
    for (int64_t i = j + 1; i < n; ++i) {
      double* row_i = s + i * n;
      row_i[j] = (row_i[j] - simd::dot(row_i, row_j, j)) * inv;
    }
  }
  *spread = n ? hi / lo : 1.0;
  return true;
}

}  // namespace

void matmul(const double* a, bool trans_a, const double* b, bool trans_b, double* c, int64_t m,
            int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  at::Tensor c_view = view(c, m, n);
  if (k == 0) {
    c_view.zero_();
    return;
  }
  const at::Tensor a_view = trans_a ? view(a, k, m).t() : view(a, m, k);
  const at::Tensor b_view = trans_b ? view(b, n, k).t() : view(b, k, n);
  at::mm_out(c_view, a_view, b_view);
}

void matmul_accumulate(const double* a, bool trans_a, const double* b, bool trans_b, double* c,
                       int64_t m, int64_t n, int64_t k, double alpha, double beta) {
  if (m == 0 || n == 0) return;
  at::Tensor c_view = view(c, m, n);
  if (k == 0) {
    c_view.mul_(beta);
    return;
  }
  const at::Tensor a_view = trans_a ? view(a, k, m).t() : view(a, m, k);
  const at::Tensor b_view = trans_b ? view(b, n, k).t() : view(b, k, n);
  at::addmm_out(c_view, c_view, a_view, b_view, beta, alpha);
}

bool orthonormalize_columns(double* q, int64_t rows, int64_t cols) {
  if (cols == 0) return true;
  // Cholesky QR leaves ||Q^T Q - I|| ~ eps * cond(Q)^2: one pass for a well-conditioned block,
  // another (cond ~ 1 by then) when the pivots spread.
  std::vector<double> gram(cols * cols);
  for (int pass = 0; pass < 3; ++pass) {
    matmul(q, true, q, false, gram.data(), cols, cols, rows);
    double spread = 0.0;
    if (!cholesky_in_place(gram.data(), cols, &spread)) break;
    // Q <- Q L^-T through LAPACK's triangular solve (reads only the lower triangle of gram).
    at::Tensor block = view(q, rows, cols);
    block.copy_(at::linalg_solve_triangular(view(gram.data(), cols, cols).t(), block,
                                            /*upper=*/true, /*left=*/false));
    if (spread < 1e2) return true;
  }
  // Householder QR, through LAPACK.
  at::Tensor block = view(q, rows, cols);
  auto [basis, r] = at::linalg_qr(block);
  const at::Tensor diag = r.diagonal().abs();
  if (!(diag.min().item<double>() > 1e-13 * diag.max().item<double>())) return false;
  block.copy_(basis);
  return true;
}

void lapack_eigh(const double* a, int64_t n, double* values, double* vectors) {
  auto [w, v] = at::linalg_eigh(view(a, n, n));
  const at::Tensor vc = v.contiguous();
  const double* wp = w.const_data_ptr<double>();
  const double* vp = vc.const_data_ptr<double>();
  for (int64_t j = 0; j < n; ++j) values[j] = wp[n - 1 - j];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) vectors[i * n + j] = vp[i * n + (n - 1 - j)];
  }
}

}  // namespace cpu
}  // namespace trp_ext
