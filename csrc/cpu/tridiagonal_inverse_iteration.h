// Eigenvectors of a symmetric tridiagonal matrix by inverse iteration, for the partial
// eigensolver (partial_eigen.cpp): the scalar LU of T - shift I, its four-lane form, and the
// loop over the wanted eigenvalues. Always-inline, compiled into partial_eigen.cpp's dispatched
// AVX2 and baseline functions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/pseudo_random.h"
#include "cpu/simd.h"

namespace trp_ext {
namespace cpu {
namespace inverse_iteration {

constexpr double kEps = std::numeric_limits<double>::epsilon();
// Inverse iteration from a random start with an eigenvalue accurate to eps ||T|| gains a factor
// gap / (eps ||T||) per solve: past kClusterTol that is > 1e10, so 2 solves leave nothing of the
// other vectors.
constexpr int kInverseIterations = 2;
// Eigenvalues closer than this (relative to ||T||) form a cluster whose vectors are
// re-orthogonalised against each other; outside a cluster inverse iteration alone leaves them
// orthogonal to eps / kClusterTol ~ 2e-11. (LAPACK's dstein uses 1e-3, which on the decaying
// spectra here makes most of the tail one cluster and re-orthogonalisation the dominant cost.)
// Equal eigenvalues are first pulled apart by kSeparation, so that the shifts differ.
constexpr double kClusterTol = 1e-5;
constexpr double kSeparation = 10.0 * kEps;
// Inverse iteration grows vectors by up to 1 / pivot per step; rescaling at this size keeps
// clusters of tiny pivots from overflowing.
constexpr double kRescale = 1e150;

// LU with partial pivoting of the tridiagonal T - shift I, laid out like LAPACK's dgttrf:
// U has two superdiagonals. Pivots below `floor` are raised to it, so that solves with a shift
// at an eigenvalue stay finite (inverse iteration wants exactly that near-singularity).
struct TridiagonalLu {
  std::vector<double> lower, diag, inv_diag, upper, upper2;
  std::vector<char> swapped;

  void factor(const double* d, const double* e, int64_t n, double shift, double floor) {
    lower.assign(e, e + std::max<int64_t>(n - 1, 0));
    upper = lower;
    upper2.assign(std::max<int64_t>(n - 2, 0), 0.0);
    diag.resize(n);
    swapped.assign(n, 0);
    for (int64_t i = 0; i < n; ++i) diag[i] = d[i] - shift;
    for (int64_t i = 0; i + 1 < n; ++i) {
      if (std::abs(diag[i]) >= std::abs(lower[i])) {
        if (diag[i] == 0.0) diag[i] = floor;  // then lower[i] == 0 too
        const double factor = lower[i] / diag[i];
        lower[i] = factor;
        diag[i + 1] -= factor * upper[i];
      } else {
        swapped[i] = 1;
        const double factor = diag[i] / lower[i];
        diag[i] = lower[i];
        lower[i] = factor;
        const double old_upper = upper[i];
        upper[i] = diag[i + 1];
        diag[i + 1] = old_upper - factor * diag[i + 1];
        if (i + 2 < n) {
          upper2[i] = upper[i + 1];
          upper[i + 1] = -factor * upper[i + 1];
        }
      }
    }
    inv_diag.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      if (std::abs(diag[i]) < floor) diag[i] = std::copysign(floor, diag[i]);
      inv_diag[i] = 1.0 / diag[i];  // solves then multiply: no division on their critical path
    }
  }

  // x <- (T - shift I)^-1 x, up to a positive scale (rescaled against overflow).
  void solve(double* x, int64_t n) const {
    for (int64_t i = 0; i + 1 < n; ++i) {
      if (swapped[i]) {
        const double top = x[i];
        x[i] = x[i + 1];
        x[i + 1] = top - lower[i] * x[i];
      } else {
        x[i + 1] -= lower[i] * x[i];
      }
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      double v = x[i];
      if (i + 1 < n) v -= upper[i] * x[i + 1];
      if (i + 2 < n) v -= upper2[i] * x[i + 2];
      x[i] = v * inv_diag[i];
      if (std::abs(x[i]) > kRescale) {
        for (int64_t l = 0; l < n; ++l) x[l] /= kRescale;
      }
    }
  }
};

// Four inverse iterations at once, one shift per vector lane. The LU factorisation and the
// solves are chains of dependent divisions and multiply-adds, bound by their latency one shift
// at a time; in lanes the four chains share each instruction. Same arithmetic as TridiagonalLu,
// with the row interchanges chosen per lane by blends. Arrays hold n groups of 4 lanes.
#if TRP_VECTOR_LOOPS
struct LaneLu {
  std::vector<double> lower, inv_diag, upper, upper2;
  std::vector<int64_t> swapped;  // all bits set in a lane whose rows i and i+1 were interchanged
};

// shifts: the 4 lanes' shifts.
TRP_INLINE void factor_lanes(const double* d, const double* e, int64_t n, const double* shifts,
                             double floor, LaneLu& lu) {
  using simd::vd4;
  const vd4 shift = simd::load4(shifts);
  // Every value the solves read is written below; row n - 1's lower and swapped are not read.
  lu.lower.resize(4 * n);
  lu.inv_diag.resize(4 * n);
  lu.upper.resize(4 * n);
  lu.upper2.resize(4 * n);
  lu.swapped.resize(4 * n);
  const vd4 zero = simd::splat4(0.0), floor4 = simd::splat4(floor);
  vd4 diag = simd::splat4(d[0]) - shift;                  // pivot row i, as updated so far
  vd4 upper = simd::splat4(n > 1 ? e[0] : 0.0);           // its first superdiagonal
  for (int64_t i = 0; i + 1 < n; ++i) {
    const vd4 sub = simd::splat4(e[i]);
    const vd4 next_diag = simd::splat4(d[i + 1]) - shift;
    const vd4 next_upper = simd::splat4(i + 2 < n ? e[i + 1] : 0.0);
    const vd4 abs_diag = diag < 0.0 ? -diag : diag, abs_sub = sub < 0.0 ? -sub : sub;
    const auto swap = abs_diag < abs_sub;
    const vd4 pivot = swap ? sub : (diag == zero ? floor4 : diag);
    const vd4 factor = (swap ? diag : sub) / pivot;
    simd::store4(&lu.lower[4 * i], factor);
    simd::store4(&lu.inv_diag[4 * i], pivot);  // inverted below
    simd::store4(&lu.upper[4 * i], swap ? next_diag : upper);
    simd::store4(&lu.upper2[4 * i], swap ? next_upper : zero);
    std::memcpy(&lu.swapped[4 * i], &swap, sizeof swap);
    diag = swap ? upper - factor * next_diag : next_diag - factor * upper;
    upper = swap ? -factor * next_upper : next_upper;
  }
  simd::store4(&lu.inv_diag[4 * (n - 1)], diag);
  simd::store4(&lu.upper[4 * (n - 1)], zero);  // the back substitution reads row n - 1's too
  simd::store4(&lu.upper2[4 * (n - 1)], zero);
  for (int64_t i = 0; i < n; ++i) {
    const vd4 v = simd::load4(&lu.inv_diag[4 * i]);
    const vd4 magnitude = v < 0.0 ? -v : v;
    const vd4 raised = magnitude < floor4 ? (v < 0.0 ? -floor4 : floor4) : v;
    simd::store4(&lu.inv_diag[4 * i], simd::splat4(1.0) / raised);
  }
}

// x (n groups of 4 lanes) <- (T - shift I)^-1 x per lane, up to a positive scale per lane.
TRP_INLINE void solve_lanes(const LaneLu& lu, int64_t n, double* x) {
  using simd::vd4;
  using lane_mask = decltype(simd::splat4(0.0) < 0.0);
  vd4 current = simd::load4(x);
  for (int64_t i = 0; i + 1 < n; ++i) {
    lane_mask swap;
    std::memcpy(&swap, &lu.swapped[4 * i], sizeof swap);
    const vd4 below = simd::load4(x + 4 * (i + 1));
    const vd4 kept = swap ? below : current;
    simd::store4(x + 4 * i, kept);
    current = (swap ? current : below) - simd::load4(&lu.lower[4 * i]) * kept;
  }
  simd::store4(x + 4 * (n - 1), current);
  const vd4 limit = simd::splat4(kRescale);
  vd4 x1 = simd::splat4(0.0), x2 = simd::splat4(0.0);  // rows i + 1 and i + 2
  for (int64_t i = n - 1; i >= 0; --i) {
    vd4 v = simd::load4(x + 4 * i) - simd::load4(&lu.upper[4 * i]) * x1 -
            simd::load4(&lu.upper2[4 * i]) * x2;
    v *= simd::load4(&lu.inv_diag[4 * i]);
    simd::store4(x + 4 * i, v);
    const auto big = (v < 0.0 ? -v : v) > limit;
    lane_mask none;
    std::memset(&none, 0, sizeof none);
    if (std::memcmp(&big, &none, sizeof big) != 0) {  // rare: rescale the lanes that grew
      const vd4 scale = big ? simd::splat4(1.0 / kRescale) : simd::splat4(1.0);
      for (int64_t l = 0; l < n; ++l) simd::store4(x + 4 * l, simd::load4(x + 4 * l) * scale);
      v *= scale;
      x1 *= scale;
    }
    x2 = x1;
    x1 = v;
  }
}
#endif

// Eigenvectors of the tridiagonal (d, e) for the descending eigenvalues lambda[0..m), by
// inverse iteration, into zt (m x n: row j is the vector of lambda[j]). Vectors outside any
// cluster need no re-orthogonalisation and run four at a time (solve_lanes); a cluster's
// vectors after its first run one at a time, against the cluster's earlier ones.
TRP_INLINE void tridiagonal_vectors_impl(const double* d, const double* e, int64_t n,
                                         const double* lambda, int64_t m, double* zt) {
  double norm = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    norm = std::max(norm, std::abs(d[i]) + (i > 0 ? std::abs(e[i - 1]) : 0.0) +
                              (i + 1 < n ? std::abs(e[i]) : 0.0));
  }
  if (norm == 0.0) norm = 1.0;  // T = 0: every unit vector is an eigenvector
  std::vector<double> dn(n), en(std::max<int64_t>(n - 1, 0));
  for (int64_t i = 0; i < n; ++i) dn[i] = d[i] / norm;
  for (int64_t i = 0; i + 1 < n; ++i) en[i] = e[i] / norm;
  // Shifts (equal eigenvalues pulled apart) and the first vector of each one's cluster.
  std::vector<double> shift(m);
  std::vector<int64_t> cluster(m, 0);
  for (int64_t j = 0; j < m; ++j) {
    shift[j] = lambda[j] / norm;
    if (j > 0) {
      const double previous = shift[j - 1];
      cluster[j] = previous - shift[j] > kClusterTol ? j : cluster[j - 1];
      if (previous - shift[j] < kSeparation) shift[j] = previous - kSeparation;
    }
  }
  const auto alone = [&](int64_t j) { return cluster[j] == j; };
  uint64_t state = 0x5DEECE66DULL + static_cast<uint64_t>(n);
  TridiagonalLu lu;
#if TRP_VECTOR_LOOPS
  LaneLu lane_lu;
  std::vector<double> lanes(4 * n);
#endif
  for (int64_t j = 0; j < m;) {
#if TRP_VECTOR_LOOPS
    if (j + 4 <= m && alone(j) && alone(j + 1) && alone(j + 2) && alone(j + 3)) {
      factor_lanes(dn.data(), en.data(), n, &shift[j], kEps, lane_lu);
      for (double& v : lanes) v = random_unit(&state);
      for (int it = 0; it < kInverseIterations; ++it) {
        solve_lanes(lane_lu, n, lanes.data());
        simd::vd4 norm2 = simd::splat4(0.0);
        for (int64_t i = 0; i < n; ++i) {
          const simd::vd4 v = simd::load4(&lanes[4 * i]);
          norm2 += v * v;
        }
        simd::vd4 scale;
        for (int l = 0; l < 4; ++l) {
          const bool lost = !(norm2[l] > 0.0) || !std::isfinite(norm2[l]);
          scale[l] = lost ? 0.0 : 1.0 / std::sqrt(norm2[l]);
        }
        for (int64_t i = 0; i < n; ++i) {
          simd::store4(&lanes[4 * i], simd::load4(&lanes[4 * i]) * scale);
        }
        for (int l = 0; l < 4; ++l) {  // lost to cancellation: restart, as below
          if (scale[l] == 0.0) {
            for (int64_t i = 0; i < n; ++i) lanes[4 * i + l] = random_unit(&state);
          }
        }
      }
      for (int l = 0; l < 4; ++l) {
        for (int64_t i = 0; i < n; ++i) zt[(j + l) * n + i] = lanes[4 * i + l];
      }
      j += 4;
      continue;
    }
#endif
    lu.factor(dn.data(), en.data(), n, shift[j], kEps);
    double* x = zt + j * n;
    for (int64_t i = 0; i < n; ++i) x[i] = random_unit(&state);
    for (int it = 0; it < kInverseIterations; ++it) {
      lu.solve(x, n);
      // Twice is enough (Kahan-Parlett) to make x orthogonal to the cluster's vectors.
      for (int pass = 0; pass < 2 && cluster[j] < j; ++pass) {
        for (int64_t c = cluster[j]; c < j; ++c) {
          const double* other = zt + c * n;
          simd::axpy(-simd::dot(x, other, n), other, x, n);
        }
      }
      const double norm2 = simd::sum_squares(x, n);
      if (!(norm2 > 0.0) || !std::isfinite(norm2)) {  // lost to cancellation: restart
        for (int64_t i = 0; i < n; ++i) x[i] = random_unit(&state);
        continue;
      }
      const double inv = 1.0 / std::sqrt(norm2);
      for (int64_t i = 0; i < n; ++i) x[i] *= inv;
    }
    ++j;
  }
}

}  // namespace inverse_iteration
}  // namespace cpu
}  // namespace trp_ext
