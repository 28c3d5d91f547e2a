// When may a warm start's Rayleigh-Ritz result stand in for the exact eigen-decomposition?
//
// Setting: G = A A^T (k x k, float64), Q an orthonormal k x b basis, Ritz pairs (theta_i, u_i) of
// Q^T G Q (theta descending) and residuals r_i = G u_i - theta_i u_i. Let T = ||A||_F^2 = tr G.
// Everything below is a rigorous bound (up to the rounding margins), so a certified warm result
// is as correct as a cold one:
//
//  * Cauchy interlacing: lambda_i(G) >= theta_i for i <= b, so the rank read off the Ritz values
//    (with the uncaptured energy T - sum(theta) lumped as one extra value) is >= the true rank.
//  * beta >= lambda_max of G compressed to span(Q)^perp, from the Frobenius norm:
//    ||G||_F^2 = ||H||_F^2 + 2||R||_F^2 + ||H_perp||_F^2. This catches a direction the basis
//    missed entirely, which no residual can show.
//  * alpha(j) = max(theta_{j+1}, beta) + ||R_{j+1..b}||_F bounds lambda_{j+1}(G) and the top of
//    G compressed to span(u_1..u_j)^perp (Weyl + interlacing).
//  * With eta(j) = theta_j - alpha(j) > 0, the sum of the top j eigenvalues exceeds the sum of the
//    top j Ritz values by at most ||R_{1..j}||_F^2 / eta(j) (quadratic residual bound, via the
//    Schur complement). Since lambda_i >= theta_i, the same bound holds for the sum of the top
//    r-1 eigenvalues for any j >= r-1: the rank is then exact unless the exact cumulative energy
//    lies within that bound of the threshold.
//  * Davis-Kahan: ||sin Theta(U_r, U*_r)||_F <= ||R_{1..r}||_F / eta(r), and
//    ||P - P*||_F <= sqrt(2) ||sin Theta||_F ||A||_2.
//  * The sub-gradient U_r V_r^T is the polar factor of the rank-r projection P; its error is at
//    most about 2 ||P - P*||_F / s_r (polar-factor perturbation), bounded here with a factor 4.
//
// Host-and-device code: the CUDA kernels certify one matrix per thread with the same function.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace trp_ext {

enum RitzStatus : int {
  kRitzCertified = 0,
  kRitzNeedWider = 1,     // the basis misses energy or a direction: widen it
  kRitzNotConverged = 2,  // more subspace iterations should get there
  kRitzNeedCold = 3,      // a warm start cannot certify this matrix at all: solve it cold
};

struct RitzCertificate {
  int64_t rank;       // the rank after the value_threshold and max_rank caps
  int status;         // RitzStatus
  // When not converged: how far the worst bound is above its tolerance, in units of the
  // residual norm (>= 1), and the contraction of the residual per power step,
  // lambda_{b+1} / lambda_r estimated as beta / theta_r. Callers size their next batch of
  // power steps with them, or give up when convergence would be too slow.
  double shortfall;
  double rate;
};

struct RitzProblem {
  int64_t k;                 // size of G
  int64_t b;                 // number of Ritz pairs
  const double* theta;       // b Ritz values, descending
  const double* res2;        // b squared residual norms ||G u_i - theta_i u_i||^2
  double gram_fro2;          // ||G||_F^2
  double total;              // T = ||A||_F^2
  int64_t energy_rank;       // energy rule on (sqrt(theta), sqrt(T - sum theta)); b + 1 = tail
  double value_cut2;         // value_threshold^2 in the units of G; < 0 when not given
  int64_t max_rank;          // < 0 when not given
  bool want_subgradient;
  double sub_floor2;         // theta at or below this is left out of the sub-gradient
  double tol_rank;           // allowed slack of the top-(r-1) energy, relative to T
  double tol_proj;           // allowed ||P - P*||_F / ||A||_F
  double tol_sub;            // allowed ||S - S*||_F / ||S*||_F
};

// Relative rounding margin of the sums below (float64 throughout).
constexpr double kCertifyEps = 2.220446049250313e-16;

namespace ritz_detail {

TRP_HOST_DEVICE inline double sum_res2(const RitzProblem& p, int64_t from, int64_t to) {
  double s = 0.0;
  for (int64_t i = from; i < to; ++i) s += p.res2[i];
  return s;
}

// Upper bound of lambda_{j+1}(G) and of the top of G compressed to span(u_1..u_j)^perp.
TRP_HOST_DEVICE inline double alpha(const RitzProblem& p, int64_t j, double beta, double slack) {
  const double next = j < p.b ? p.theta[j] : 0.0;
  return (next > beta ? next : beta) + sqrt(sum_res2(p, j, p.b)) + slack;
}

// Gap between the top j Ritz values and everything else; the bounds need it > 0.
TRP_HOST_DEVICE inline double eta(const RitzProblem& p, int64_t j, double beta, double slack) {
  return p.theta[j - 1] - alpha(p, j, beta, slack);
}

}  // namespace ritz_detail

TRP_HOST_DEVICE inline RitzCertificate certify_ritz(const RitzProblem& p) {
  using ritz_detail::alpha;
  using ritz_detail::eta;
  using ritz_detail::sum_res2;
  const int64_t b = p.b;
  if (p.energy_rank > b) return {p.energy_rank, kRitzNeedWider, 1.0, 1.0};

  double sum_theta2 = 0.0;
  for (int64_t i = 0; i < b; ++i) sum_theta2 += p.theta[i] * p.theta[i];
  const double round2 = 8.0 * static_cast<double>(p.k + b) * kCertifyEps * p.gram_fro2;
  double beta = 0.0;
  if (b < p.k) {
    const double perp2 = p.gram_fro2 - sum_theta2 - 2.0 * sum_res2(p, 0, b);
    beta = sqrt((perp2 > 0.0 ? perp2 : 0.0) + round2);
  }
  // A rounding margin on every eigenvalue bound: the eigensolver leaves ~eps * theta_1.
  const double theta1 = b > 0 && p.theta[0] > 0.0 ? p.theta[0] : 0.0;
  const double slack = 4.0 * static_cast<double>(p.k) * kCertifyEps * (theta1 + beta);

  // 1. Energy rank. r~ <= 1 is exact: the true rank lies in [1, r~] when T > 0.
  const int64_t r_energy = p.energy_rank;
  double shortfall = 0.0;  // max over the bounds of bound / tolerance, in residual-norm units
  if (r_energy >= 2) {
    double best = INFINITY;
    for (int64_t j = r_energy - 1; j <= b; ++j) {
      const double gap = eta(p, j, beta, slack);
      if (gap > 0.0) {
        const double bound = sum_res2(p, 0, j) / gap;
        best = bound < best ? bound : best;
      }
    }
    if (!(best < INFINITY)) {
      const bool missed = beta >= p.theta[r_energy - 1];
      return {r_energy, missed ? kRitzNeedWider : kRitzNotConverged, INFINITY, 1.0};
    }
    const double ratio = sqrt(best / (p.tol_rank * p.total));  // the bound is quadratic
    shortfall = ratio > shortfall ? ratio : shortfall;
  }

  // 2. The caps. A value cap that binds at c needs lambda_{c+1} < value_threshold^2.
  int64_t rank = r_energy;
  if (p.value_cut2 >= 0.0) {
    int64_t count = 0;
    while (count < b && p.theta[count] >= p.value_cut2) ++count;
    if (count < rank) {
      if (!(alpha(p, count, beta, slack) < p.value_cut2)) {
        return {count, beta >= p.value_cut2 ? kRitzNeedWider : kRitzNotConverged, INFINITY, 1.0};
      }
      rank = count;
    }
  }
  if (p.max_rank >= 0 && p.max_rank < rank) rank = p.max_rank;
  if (rank == 0 || rank >= p.k) {
    return {rank, shortfall <= 1.0 ? kRitzCertified : kRitzNotConverged, shortfall, 1.0};
  }

  // 3. The projection onto the top `rank` Ritz vectors.
  const double gap = eta(p, rank, beta, slack);
  if (!(gap > 0.0)) {
    return {rank, beta >= p.theta[rank - 1] ? kRitzNeedWider : kRitzNotConverged, INFINITY, 1.0};
  }
  // Subspace iteration shrinks the residuals by lambda_{b+1} / lambda_r per power step: beta
  // bounds the eigenvalues outside span(Q). (The gap inside the block, theta_{r+1} / theta_r,
  // only sets how small they must get.)
  const double rate = (beta + slack) / p.theta[rank - 1];
  const double lambda1 = (theta1 > beta ? theta1 : beta) + sqrt(sum_res2(p, 0, b)) + slack;
  const double proj_err = sqrt(2.0 * sum_res2(p, 0, rank)) / gap * sqrt(lambda1);  // absolute
  const double proj_ratio = proj_err / (p.tol_proj * sqrt(p.total));
  shortfall = proj_ratio > shortfall ? proj_ratio : shortfall;

  // 4. The sub-gradient U_r V_r^T.
  if (p.want_subgradient) {
    // A kept value below the sub-gradient tolerance: only a full solve resolves that tail.
    if (p.theta[rank - 1] <= p.sub_floor2) return {rank, kRitzNeedCold, INFINITY, rate};
    const double sub_err =
        4.0 * proj_err / sqrt(p.theta[rank - 1]) / sqrt(static_cast<double>(rank));
    const double sub_ratio = sub_err / p.tol_sub;
    shortfall = sub_ratio > shortfall ? sub_ratio : shortfall;
  }
  return {rank, shortfall <= 1.0 ? kRitzCertified : kRitzNotConverged, shortfall, rate};
}

}  // namespace trp_ext
