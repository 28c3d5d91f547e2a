// Partial symmetric eigen-decomposition (see partial_eigen.h).
#include "cpu/partial_eigen.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "cpu/lowrank_linalg.h"
#include "cpu/simd.h"
#include "cpu/tridiagonal_inverse_iteration.h"
#include "cpu/tridiagonal_ql.h"

namespace trp_ext {
namespace cpu {
namespace {

// Householder reflector of row i of a (the column i below the diagonal, by symmetry) that
// zeroes its columns i+2..n-1: stores v (v_0 = 1 implicit) there and in v_out, the new
// off-diagonal in offdiag[i], and returns tau (0 when the row is already reduced).
TRP_INLINE double make_reflector(double* a, int64_t n, int64_t i, double* v_out, double* tau,
                                 double* offdiag) {
  double* x = a + i * n + i + 1;
  const int64_t m = n - i - 1;
  const double tail2 = simd::sum_squares(x + 1, m - 1);
  const double alpha = x[0];
  if (tail2 == 0.0) {
    tau[i] = 0.0;
    offdiag[i] = alpha;
    return 0.0;
  }
  const double beta = -std::copysign(std::sqrt(alpha * alpha + tail2), alpha);
  const double scale = 1.0 / (alpha - beta);
  v_out[0] = 1.0;
  for (int64_t l = 1; l < m; ++l) v_out[l] = x[l] *= scale;
  tau[i] = (beta - alpha) / beta;
  offdiag[i] = beta;
  return tau[i];
}

// p = tau * A22 v for the block [from, n) of a, from its upper triangle.
TRP_INLINE void symmetric_product(const double* a, int64_t n, int64_t from, const double* v,
                                  double tau, double* p) {
  const int64_t m = n - from;
  std::fill(p, p + m, 0.0);
  for (int64_t j = 0; j < m; ++j) {
    const double* row = a + (from + j) * n + (from + j);
    p[j] += row[0] * v[j] + simd::dot_and_axpy(row + 1, v + j + 1, v[j], p + j + 1, m - j - 1);
  }
  for (int64_t j = 0; j < m; ++j) p[j] *= tau;
}

// Householder reduction A = Q T Q^T of the symmetric n x n row-major a, reading and updating
// only the upper triangle. Row i of a keeps reflector i (v_0 = 1 implicit) in columns i+2..n-1.
// Step i applies A22 -= v w^T + w v^T with w = p - (tau/2)(p.v) v, p = tau A22 v. The product
// p of step i+1 is accumulated in the same pass over the rows as the update of step i (each
// row is updated, then used while it is still in L1): one pass over the matrix per step
// instead of two, on a reduction that is bound by cache bandwidth.
template <bool kAvx2>
TRP_INLINE void tridiagonalize_impl(double* a, int64_t n, double* tau, double* diag,
                                    double* offdiag) {
  std::vector<double> v(n), w(n), v_next(n), p_next(n);
  if (n >= 3 && make_reflector(a, n, 0, v.data(), tau, offdiag) != 0.0) {
    symmetric_product(a, n, 1, v.data(), tau[0], w.data());
  }
  for (int64_t i = 0; i + 2 < n; ++i) {
    const int64_t m = n - i - 1;  // the block [i+1, n)
    diag[i] = a[i * n + i];
    const double t = tau[i];
    if (t != 0.0) {
      const double half = 0.5 * t * simd::dot(w.data(), v.data(), m);
      simd::axpy(-half, v.data(), w.data(), m);
      simd::rank2_row(a + (i + 1) * n + (i + 1), v[0], w.data(), w[0], v.data(), m);
    }
    const double t_next =
        i + 3 < n ? make_reflector(a, n, i + 1, v_next.data(), tau, offdiag) : 0.0;
    if (t_next != 0.0) std::fill(p_next.begin(), p_next.begin() + (m - 1), 0.0);
    int64_t jj = 1;
    if (t != 0.0 && t_next != 0.0) {  // the common case: two rows at a time, both steps in one pass
      for (; jj + 2 < m; jj += 2) {
        double* row = a + (i + 1 + jj) * n + (i + 1 + jj);
        const int64_t r = jj - 1;
        double sa = 0.0, sb = 0.0;
        simd::rank2_dot_axpy_pair<kAvx2>(row, row + n + 1, v[jj], w[jj], v_next[r], v[jj + 1],
                                         w[jj + 1], v_next[r + 1], w.data() + jj, v.data() + jj,
                                         v_next.data() + r, p_next.data() + r, m - jj, &sa, &sb);
        p_next[r] += sa;
        p_next[r + 1] += sb;
      }
    }
    for (; jj < m; ++jj) {
      double* row = a + (i + 1 + jj) * n + (i + 1 + jj);
      if (t != 0.0 && t_next != 0.0) {  // the common case: both in one pass over the row
        const int64_t r = jj - 1;
        p_next[r] += simd::rank2_dot_axpy(row, v[jj], w.data() + jj, w[jj], v.data() + jj,
                                          v_next.data() + r, v_next[r], p_next.data() + r,
                                          m - jj);
        continue;
      }
      if (t != 0.0) simd::rank2_row(row, v[jj], w.data() + jj, w[jj], v.data() + jj, m - jj);
      if (t_next != 0.0) {
        const int64_t r = jj - 1;  // the row's index in the next block [i+2, n)
        p_next[r] += row[0] * v_next[r] + simd::dot_and_axpy(row + 1, v_next.data() + r + 1,
                                                             v_next[r], p_next.data() + r + 1,
                                                             m - jj - 1);
      }
    }
    if (t_next != 0.0) {
      for (int64_t r = 0; r + 1 < m; ++r) p_next[r] *= t_next;
    }
    v.swap(v_next);
    w.swap(p_next);
  }
  if (n >= 2) {
    diag[n - 2] = a[(n - 2) * n + n - 2];
    offdiag[n - 2] = a[(n - 2) * n + n - 1];
  }
  if (n >= 1) diag[n - 1] = a[(n - 1) * n + n - 1];
}
TRP_CPU_DISPATCH_TEMPLATE(void, tridiagonalize,
                          (double* a, int64_t n, double* tau, double* diag, double* offdiag),
                          (a, n, tau, diag, offdiag))

using inverse_iteration::tridiagonal_vectors_impl;
TRP_CPU_DISPATCH(void, tridiagonal_vectors,
                 (const double* d, const double* e, int64_t n, const double* lambda, int64_t m,
                  double* zt),
                 (d, e, n, lambda, m, zt))

// out (n x m) <- Q out, Q = H_first ... H_{last-1} of the reflectors kept in `house`: the last
// reflector first, one at a time (level 2).
TRP_INLINE void back_transform_impl(const double* house, const double* tau, int64_t n,
                                    int64_t m, double* out, int64_t first, int64_t last) {
  std::vector<double> w(m);
  for (int64_t i = last - 1; i >= first; --i) {
    const double t = tau[i];
    if (t == 0.0) continue;
    const double* v = house + i * n + i + 1;  // v[0] = 1 implicit, v[l] for l >= 1
    double* rows = out + (i + 1) * m;          // rows i+1..n-1 of out
    const int64_t len = n - i - 1;
    std::copy(rows, rows + m, w.begin());
    for (int64_t l = 1; l < len; ++l) simd::axpy(v[l], rows + l * m, w.data(), m);
    for (int64_t c = 0; c < m; ++c) w[c] *= t;
    simd::axpy(-1.0, w.data(), rows, m);
    for (int64_t l = 1; l < len; ++l) simd::axpy(-v[l], w.data(), rows + l * m, m);
  }
}
TRP_CPU_DISPATCH(void, back_transform,
                 (const double* house, const double* tau, int64_t n, int64_t m, double* out,
                  int64_t first, int64_t last),
                 (house, tau, n, m, out, first, last))

// Reflectors per block of the blocked back-transformation, and the size from which it pays.
constexpr int64_t kReflectorBlock = 32;
constexpr int64_t kBlockedFromSize = 64;

// The same in blocks of kReflectorBlock reflectors, each applied as I - V T V^T (the compact
// WY form, T upper triangular) by two GEMMs: the flops of the level-2 version at GEMM speed.
void back_transform_blocked(const double* house, const double* tau, int64_t n, double* out,
                            int64_t m) {
  const int64_t count = n - 2;  // reflectors 0..n-3
  ScratchVector<double> vt, t, w;
  for (int64_t end = count; end > 0; end -= kReflectorBlock) {
    const int64_t begin = std::max<int64_t>(0, end - kReflectorBlock);
    const int64_t nb = end - begin;
    const int64_t len = n - begin - 1;  // rows begin+1..n-1
    // V^T (nb x len): reflector begin+c is 1 at local row c, house's v below, zero above.
    vt.assign(nb * len, 0.0);
    for (int64_t c = 0; c < nb; ++c) {
      const int64_t i = begin + c;
      double* row = vt.data() + c * len;
      row[c] = 1.0;
      std::copy(house + i * n + i + 2, house + i * n + n, row + c + 1);
    }
    // T: T_cc = tau_c, T[0:c, c] = -tau_c T[0:c, 0:c] V[:, 0:c]^T v_c.
    t.assign(nb * nb, 0.0);
    std::vector<double> y(nb);
    for (int64_t c = 0; c < nb; ++c) {
      const double tc = tau[begin + c];
      t[c * nb + c] = tc;
      if (tc == 0.0) continue;
      for (int64_t j = 0; j < c; ++j) {
        y[j] = simd::dot(vt.data() + j * len + c, vt.data() + c * len + c, len - c);
      }
      for (int64_t j = 0; j < c; ++j) {
        double sum = 0.0;
        for (int64_t l = j; l < c; ++l) sum += t[j * nb + l] * y[l];
        t[j * nb + c] = -tc * sum;
      }
    }
    double* rows = out + (begin + 1) * m;
    w.resize(nb * m);
    matmul(vt.data(), false, rows, false, w.data(), nb, m, len);        // W = V^T Z
    ScratchVector<double> tw(nb * m);
    matmul(t.data(), false, w.data(), false, tw.data(), nb, m, nb);     // W = T W
    matmul_accumulate(vt.data(), true, tw.data(), false, rows, len, m, nb, -1.0, 1.0);  // Z -= V W
  }
}

}  // namespace

void SymmetricEigen::reduce(const double* a, int64_t n) {
  SymmetricEigen* self = this;
  reduce_all(&self, &a, &n, 1);
}

void SymmetricEigen::reduce_all(SymmetricEigen* const* eigens, const double* const* matrices,
                                const int64_t* sizes, int64_t count) {
  // Each matrix to tridiagonal form (or to LAPACK, when large), then the eigenvalues of all the
  // tridiagonal ones in one interleaved QL.
  std::vector<TridiagonalProblem> problems;
  std::vector<std::vector<double>> off_copies;  // QL destroys its off-diagonals
  std::vector<SymmetricEigen*> owners;
  problems.reserve(count);
  off_copies.reserve(count);
  for (int64_t t = 0; t < count; ++t) {
    SymmetricEigen& eig = *eigens[t];
    const double* a = matrices[t];
    const int64_t n = sizes[t];
    eig.n_ = n;
    eig.lapack_ = n >= kLapackFromSize;
    if (eig.lapack_) continue;
    eig.house_.assign(a, a + n * n);
    eig.tau_.assign(std::max<int64_t>(n - 2, 0), 0.0);
    eig.diag_.assign(n, 0.0);
    eig.offdiag_.assign(n, 0.0);
    tridiagonalize(eig.house_.data(), n, eig.tau_.data(), eig.diag_.data(), eig.offdiag_.data());
    double norm = 0.0;  // ||T||_inf (T symmetric, so also ||T||_1)
    for (int64_t i = 0; i < n; ++i) {
      norm = std::max(norm, std::abs(eig.diag_[i]) + std::abs(eig.offdiag_[i]) +
                                (i > 0 ? std::abs(eig.offdiag_[i - 1]) : 0.0));
    }
    eig.values_ = eig.diag_;
    off_copies.push_back(eig.offdiag_);
    TridiagonalProblem problem;
    problem.d = eig.values_.data();
    problem.e = off_copies.back().data();
    problem.n = n;
    problem.norm = norm;
    problems.push_back(problem);
    owners.push_back(&eig);
  }
  ql_eigenvalues(problems.data(), static_cast<int64_t>(problems.size()));
  for (size_t t = 0; t < owners.size(); ++t) {
    SymmetricEigen& eig = *owners[t];
    if (problems[t].converged) {
      std::sort(eig.values_.begin(), eig.values_.end(), std::greater<double>());
    } else {
      eig.lapack_ = true;  // the (never seen) non-converged QL: LAPACK instead
    }
  }
  for (int64_t t = 0; t < count; ++t) {
    SymmetricEigen& eig = *eigens[t];
    if (!eig.lapack_) continue;
    const int64_t n = sizes[t];
    eig.values_.resize(n);
    eig.house_.resize(n * n);
    lapack_eigh(matrices[t], n, eig.values_.data(), eig.house_.data());
  }
}

void SymmetricEigen::vectors(int64_t m, double* out) {
  const int64_t n = n_;
  if (m == 0 || n == 0) return;
  if (lapack_) {
    for (int64_t i = 0; i < n; ++i) std::copy(&house_[i * n], &house_[i * n] + m, out + i * m);
    return;
  }
  ScratchVector<double> zt(m * n);
  tridiagonal_vectors(diag_.data(), offdiag_.data(), n, values_.data(), m, zt.data());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) out[i * m + j] = zt[j * n + i];
  }
  if (n >= kBlockedFromSize) {
    back_transform_blocked(house_.data(), tau_.data(), n, out, m);
  } else {
    back_transform(house_.data(), tau_.data(), n, m, out, 0, std::max<int64_t>(n - 2, 0));
  }
}

}  // namespace cpu
}  // namespace trp_ext
