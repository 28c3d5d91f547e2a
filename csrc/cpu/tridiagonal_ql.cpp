// Implicit QL on tridiagonal matrices, several interleaved (see tridiagonal_ql.h).
//
// The method is the root-free QL of Pal, Walker and Kahan (LAPACK's dsterf) with Wilkinson-type
// shifts: it carries the squared off-diagonals, so that a rotation costs two divisions and no
// square root (the classic form's square root and division took twice as long). It works on
// T / ||T||, where no square or sum below can overflow, and every squared off-diagonal still in
// play is above eps^2, far from underflow. An off-diagonal deflates once below eps * ||T||:
// absolute accuracy eps ||T||, all the Gram matrix itself carries, and a relative test would
// stall on noise-sized blocks of a rank-deficient Gram.
#include "cpu/tridiagonal_ql.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace trp_ext {
namespace cpu {
namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
constexpr int kMaxQlIterations = 60;  // per eigenvalue; QL needs ~1.5 on average

// Eigenvalues of the 2 x 2 symmetric [[a, b], [b, c]] (LAPACK's dlae2), in any order.
void eigenvalues_2x2(double a, double b, double c, double* rt1, double* rt2) {
  const double sm = a + c, adf = std::abs(a - c), ab = std::abs(b + b);
  const double acmx = std::abs(a) > std::abs(c) ? a : c;
  const double acmn = std::abs(a) > std::abs(c) ? c : a;
  double rt;
  if (adf > ab) {
    rt = adf * std::sqrt(1.0 + (ab / adf) * (ab / adf));
  } else if (adf < ab) {
    rt = ab * std::sqrt(1.0 + (adf / ab) * (adf / ab));
  } else {
    rt = ab * std::sqrt(2.0);
  }
  if (sm == 0.0) {
    *rt1 = 0.5 * rt;
    *rt2 = -0.5 * rt;
    return;
  }
  *rt1 = 0.5 * (sm < 0.0 ? sm - rt : sm + rt);
  // The smaller one from the determinant: no cancellation.
  *rt2 = (acmx / *rt1) * acmn - (b / *rt1) * b;
}

// One problem's QL, advanced a sweep, and within it a rotation, at a time.
struct QlState {
  double* d;
  double* e;
  int64_t n;
  int64_t l = 0;       // the eigenvalue being found: d[0..l) are final
  int iterations = 0;  // sweeps spent on l
  bool failed = false;
  // The current sweep: rotations i = m - 1 down to l.
  int64_t m = 0, i = -1;
  double c = 1.0, s = 0.0, p = 0.0, gamma = 0.0, sigma = 0.0;

  int64_t rotations_left() const { return i - l + 1; }

  // Deflates, closes 2 x 2 blocks, and sets up the next sweep; false once every eigenvalue is
  // found (or the iteration limit is hit: failed).
  bool start_sweep() {
    const double negligible2 = kEps * kEps;
    for (; l < n; ++l, iterations = 0) {
      m = l;
      for (; m + 1 < n; ++m) {
        if (e[m] <= negligible2) break;
      }
      if (m == l) continue;
      if (m == l + 1) {  // a 2 x 2 block: closed form (d[l + 1] is then found at once)
        double rt1, rt2;
        eigenvalues_2x2(d[l], std::sqrt(e[l]), d[l + 1], &rt1, &rt2);
        d[l] = rt1;
        d[l + 1] = rt2;
        e[l] = 0.0;
        continue;
      }
      if (++iterations > kMaxQlIterations) {
        failed = true;
        return false;
      }
      const double rte = std::sqrt(e[l]);
      double shift = (d[l + 1] - d[l]) / (2.0 * rte);
      const double r0 = std::sqrt(shift * shift + 1.0);
      sigma = d[l] - rte / (shift + std::copysign(r0, shift));
      c = 1.0;
      s = 0.0;
      gamma = d[m] - sigma;
      p = gamma * gamma;
      i = m - 1;
      return true;
    }
    return false;
  }

  void end_sweep() {
    e[l] = s * p;
    d[l] = sigma + gamma;
  }
};

// One rotation of a sweep, on locals (so that the interleaved loops keep each problem's chain
// in registers).
struct Rotation {
  double c, s, p, gamma;
};
inline void rotate(double* __restrict d, double* __restrict e, int64_t i, int64_t m, double sigma,
                   Rotation& x) {
  const double bb = e[i];
  const double r = x.p + bb;  // > 0: bb > eps^2 for every i < m
  // One reciprocal on the chain from r to the next p instead of two divisions: c = p / r,
  // s = bb / r, and gamma^2 / c = gamma^2 (r / p), whose 1 / p starts as soon as p is known,
  // off the chain (a subnormal p, whose reciprocal overflows, divides as before).
  const bool p_normal = x.p >= std::numeric_limits<double>::min();
  const double inv_p = p_normal ? 1.0 / x.p : 0.0;
  const double inv_r = 1.0 / r;
  if (i != m - 1) e[i + 1] = x.s * r;
  const double old_c = x.c;
  x.c = x.p * inv_r;
  x.s = bb * inv_r;
  const double old_gamma = x.gamma;
  const double alpha = d[i];
  x.gamma = x.c * (alpha - sigma) - x.s * old_gamma;
  d[i + 1] = old_gamma + (alpha - x.gamma);
  if (x.c == 0.0) {
    x.p = old_c * bb;
  } else {
    x.p = p_normal ? (x.gamma * x.gamma) * (r * inv_p) : (x.gamma * x.gamma) / x.c;
  }
}

// `steps` rotations of each of the K sweeps, interleaved. Each sweep's arrays, indices and shift
// are copied to locals first: read through q, every store into d or e (which could alias them,
// for all the compiler knows) would force them to be loaded again on every rotation.
template <int K>
void rotate_interleaved(QlState* const* q, int64_t steps) {
  Rotation x[K];
  double* d[K];
  double* e[K];
  int64_t first[K], m[K];
  double sigma[K];
  for (int j = 0; j < K; ++j) {
    x[j] = {q[j]->c, q[j]->s, q[j]->p, q[j]->gamma};
    d[j] = q[j]->d;
    e[j] = q[j]->e;
    first[j] = q[j]->i;
    m[j] = q[j]->m;
    sigma[j] = q[j]->sigma;
  }
  for (int64_t k = 0; k < steps; ++k) {
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) rotate(d[j], e[j], first[j] - k, m[j], sigma[j], x[j]);
  }
  for (int j = 0; j < K; ++j) {
    q[j]->c = x[j].c;
    q[j]->s = x[j].s;
    q[j]->p = x[j].p;
    q[j]->gamma = x[j].gamma;
    q[j]->i -= steps;
  }
}

void rotate_group(QlState* const* q, int active, int64_t steps) {
  switch (active) {
    case 4: return rotate_interleaved<4>(q, steps);
    case 3: return rotate_interleaved<3>(q, steps);
    case 2: return rotate_interleaved<2>(q, steps);
    default: return rotate_interleaved<1>(q, steps);
  }
}

}  // namespace

void ql_eigenvalues(TridiagonalProblem* problems, int64_t count) {
  std::vector<QlState> states;
  states.reserve(count);
  for (int64_t t = 0; t < count; ++t) {
    TridiagonalProblem& pr = problems[t];
    pr.converged = true;
    if (pr.n == 0) continue;
    pr.e[pr.n - 1] = 0.0;
    if (pr.norm == 0.0) continue;
    for (int64_t i = 0; i < pr.n; ++i) {
      pr.d[i] /= pr.norm;
      pr.e[i] = (pr.e[i] / pr.norm) * (pr.e[i] / pr.norm);
    }
    states.push_back(QlState{pr.d, pr.e, pr.n});
  }
  // Up to kQlGroup problems in flight; the next one starts as soon as one finishes.
  QlState* active[kQlGroup];
  int in_flight = 0;
  size_t next = 0;
  for (;;) {
    while (in_flight < kQlGroup && next < states.size()) {
      QlState* q = &states[next++];
      if (q->start_sweep()) active[in_flight++] = q;
    }
    if (in_flight == 0) break;
    int64_t steps = active[0]->rotations_left();
    for (int j = 1; j < in_flight; ++j) steps = std::min(steps, active[j]->rotations_left());
    rotate_group(active, in_flight, steps);
    // Sweeps that ended: finish them, start the next one or retire the problem.
    for (int j = 0; j < in_flight;) {
      QlState* q = active[j];
      if (q->rotations_left() > 0) {
        ++j;
        continue;
      }
      q->end_sweep();
      if (q->start_sweep()) {
        ++j;
      } else {
        active[j] = active[--in_flight];
      }
    }
  }
  size_t s = 0;
  for (int64_t t = 0; t < count; ++t) {
    TridiagonalProblem& pr = problems[t];
    if (pr.n == 0 || pr.norm == 0.0) continue;
    pr.converged = !states[s++].failed;
    for (int64_t i = 0; i < pr.n; ++i) pr.d[i] *= pr.norm;
  }
}

}  // namespace cpu
}  // namespace trp_ext
