// One matrix of the CPU lowrank_project kernel (see lowrank_project_solver.h).
//
// The matrix A (k x len, k = the shorter side) is loaded as float64 and scaled by a power of two.
// Its Gram matrix G = A A^T is formed in float64: a float32 Gram would square the condition
// number and lose the small singular values the contract checks. The top eigenpairs of G give
// U_r, and P = U_r (U_r^T A), the sub-gradient U_r V_r^T = U_r S_r^-1 (U_r^T A): V is never formed.
//
// Cold: the full eigen-decomposition of G. Warm: subspace iteration on G from the previous
// call's basis, then Rayleigh-Ritz, certified by common/ritz_certificate.h; a basis that does
// not hold the energy is widened, and a warm start that cannot be certified falls back to cold.
#include "cpu/lowrank_project_solver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/energy_rule.h"
#include "common/lowrank_project_policy.h"
#include "common/ritz_certificate.h"
#include "cpu/lowrank_linalg.h"
#include "cpu/partial_eigen.h"

namespace trp_ext {
namespace cpu {
namespace {

// A warm start gives up (-> cold solve) rather than exceed this many products with G, which
// would cost about as much as the cold solve.
constexpr int64_t kMaxWarmSteps = 8;
constexpr int kMaxWidenings = 2;
// A residual that contracts slower than this per power step is not worth iterating on: widen.
constexpr double kSlowestRate = 0.5;
// Ritz values (or column norms of G Q) below this fraction of the largest do not advance in the
// next iterate: dividing by them would only amplify rounding, and their directions hold no
// energy worth resolving.
constexpr double kStagnantRitz = 1e-12;

// Reproducible pseudo-random numbers in [-1, 1) (splitmix64) for the columns a widened basis adds.
double random_unit(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0;
}

// The matrix as k x len float64 (transposed when it has more rows than columns), scaled.
struct Problem {
  int64_t m = 0, n = 0, k = 0, len = 0;
  bool transposed = false;
  at::Tensor a;               // k x len: mat (or mat^T) * 2^-exponent
  int exponent = 0;
  double total = 0.0;         // ||a||_F^2
  std::vector<double> gram;   // k x k
  double gram_fro2 = 0.0;     // ||gram||_F^2
  double value_cut = -1.0;    // value_threshold in the units of a; < 0 when not given
};

// The top eigenpairs of the Gram matrix, descending, and the rank chosen from them.
struct Spectrum {
  int64_t width = 0;
  std::vector<double> values;   // width
  std::vector<double> vectors;  // k x width
  int64_t rank = 0;
};

// Returns false when the matrix holds NaN or Inf.
bool load(const at::Tensor& mat, const ProjectOptions& options, Problem& p) {
  p.m = mat.size(0);
  p.n = mat.size(1);
  p.transposed = p.m > p.n;
  p.k = std::min(p.m, p.n);
  p.len = std::max(p.m, p.n);
  p.a = at::empty({p.k, p.len}, mat.options().dtype(at::kDouble));
  p.a.copy_(p.transposed ? mat.t() : mat);
  double* a = p.a.data_ptr<double>();
  const int64_t size = p.k * p.len;
  double amax = 0.0;
  bool finite = true;
  for (int64_t i = 0; i < size; ++i) {
    finite &= std::isfinite(a[i]);
    amax = std::max(amax, std::abs(a[i]));
  }
  if (!finite) return false;
  if (amax > 0.0) {
    int exponent = 0;
    std::frexp(amax, &exponent);
    if (std::abs(exponent) > kMaxUnscaledExponent) {
      // ldexp per element: 2^-exponent itself overflows for subnormal-only matrices.
      p.exponent = exponent;
      for (int64_t i = 0; i < size; ++i) a[i] = std::ldexp(a[i], -exponent);
    }
  }
  double total = 0.0;
  for (int64_t i = 0; i < size; ++i) total += a[i] * a[i];
  p.total = total;
  if (options.value_threshold >= 0.0) p.value_cut = std::ldexp(options.value_threshold, -p.exponent);
  return true;
}

void form_gram(Problem& p) {
  const int64_t k = p.k;
  p.gram.assign(k * k, 0.0);
  matmul(p.a.const_data_ptr<double>(), false, p.a.const_data_ptr<double>(), true, p.gram.data(),
         k, k, p.len);
  // GEMM may round G_ij and G_ji differently; the eigensolvers want exact symmetry.
  double fro2 = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      const double v = 0.5 * (p.gram[i * k + j] + p.gram[j * k + i]);
      p.gram[i * k + j] = p.gram[j * k + i] = v;
      fro2 += 2.0 * v * v;
    }
    fro2 += p.gram[i * k + i] * p.gram[i * k + i];
  }
  p.gram_fro2 = fro2;
}

// The rank rule on a full, descending spectrum of G: energy, then the caps.
int64_t rank_of_spectrum(const std::vector<double>& values, const Problem& p,
                         const ProjectOptions& options) {
  std::vector<double> singular(values.size());
  for (size_t i = 0; i < values.size(); ++i) singular[i] = std::sqrt(values[i]);
  int64_t rank = energy_rank_of_row(singular.data(), static_cast<int64_t>(singular.size()),
                                    options.energy);
  if (p.value_cut >= 0.0) {
    int64_t count = 0;
    while (count < rank && singular[count] >= p.value_cut) ++count;
    rank = count;
  }
  if (options.max_rank >= 0) rank = std::min(rank, options.max_rank);
  return rank;
}

void cold_solve(const Problem& p, const ProjectOptions& options, Spectrum& s) {
  SymmetricEigen eigen;
  eigen.reduce(p.gram.data(), p.k);
  std::vector<double> values = eigen.values();
  for (double& v : values) v = std::max(v, 0.0);  // G is PSD; rounding may say otherwise
  s.rank = rank_of_spectrum(values, p, options);
  // Vectors only for the rank and the oversampling the returned basis keeps.
  s.width = basis_width(s.rank, p.k);
  s.values.assign(values.begin(), values.begin() + s.width);
  s.vectors.resize(p.k * s.width);
  eigen.vectors(s.width, s.vectors.data());
}

// One power step q <- orth(G q). The columns of G q are first scaled to unit norm: q's columns
// track Ritz vectors, so the scaled block is nearly orthonormal and Cholesky QR is exact enough.
// A column that G nearly annihilates keeps its old direction (its eigenvalues hold no energy).
bool power_step(const Problem& p, std::vector<double>& q, int64_t b, std::vector<double>& work) {
  const int64_t k = p.k;
  work.resize(k * b);
  matmul(p.gram.data(), false, q.data(), false, work.data(), k, b, k);
  std::vector<double> norm2(b, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < b; ++j) norm2[j] += work[i * b + j] * work[i * b + j];
  }
  const double largest = *std::max_element(norm2.begin(), norm2.end());
  for (int64_t j = 0; j < b; ++j) {
    const bool stagnant = !(norm2[j] > kStagnantRitz * kStagnantRitz * largest);
    const double scale = stagnant ? 0.0 : 1.0 / std::sqrt(norm2[j]);
    for (int64_t i = 0; i < k; ++i) {
      work[i * b + j] = stagnant ? q[i * b + j] : work[i * b + j] * scale;
    }
  }
  q.swap(work);
  return orthonormalize_columns(q.data(), k, b);
}

// Subspace iteration on G from `basis` with Rayleigh-Ritz, until common/ritz_certificate.h
// certifies the result (returns true, `s` filled). Power steps without Rayleigh-Ritz are cheap
// (a GEMM and a Cholesky QR), so after a failed certificate the solver runs as many as the
// certificate's shortfall and contraction rate predict, then tries again; it widens the basis
// when the rate is too slow or the basis misses energy, and gives up (-> cold solve) when
// either would exceed kMaxWarmSteps products with G.
bool warm_solve(const Problem& p, const at::Tensor& basis, const ProjectOptions& options,
                const WarmTolerances& tol, double sub_floor, uint64_t seed, Spectrum& s,
                bool* widened, int64_t* steps_used) {
  const int64_t k = p.k;
  int64_t b = basis.size(1);
  std::vector<double> q(k * b), work, gq, h, e, u, gu, res2, singular;
  at::from_blob(q.data(), {k, b}, at::TensorOptions(at::kDouble)).copy_(basis);
  if (!orthonormalize_columns(q.data(), k, b)) return false;
  SymmetricEigen eigen;
  uint64_t random_state = seed * 0x2545F4914F6CDD1DULL + 1;
  int widenings = 0;
  // Any drift since the basis was computed needs at least one step before Rayleigh-Ritz.
  int64_t pending = 1;
  for (;;) {
    for (; pending > 0; --pending) {
      if (*steps_used >= kMaxWarmSteps) return false;
      ++*steps_used;
      if (!power_step(p, q, b, work)) return false;
    }
    if (*steps_used >= kMaxWarmSteps) return false;
    ++*steps_used;
    // Rayleigh-Ritz: H = Q^T G Q = E Theta E^T, Ritz vectors U = Q E, and G U = (G Q) E.
    gq.resize(k * b);
    h.resize(b * b);
    matmul(p.gram.data(), false, q.data(), false, gq.data(), k, b, k);
    matmul(q.data(), true, gq.data(), false, h.data(), b, b, k);
    eigen.reduce(h.data(), b);  // reads the upper triangle only: H need not be exactly symmetric
    const std::vector<double>& theta = eigen.values();
    e.resize(b * b);
    eigen.vectors(b, e.data());
    u.resize(k * b);
    gu.resize(k * b);
    matmul(q.data(), false, e.data(), false, u.data(), k, b, b);
    matmul(gq.data(), false, e.data(), false, gu.data(), k, b, b);
    res2.assign(b, 0.0);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < b; ++j) {
        const double r = gu[i * b + j] - theta[j] * u[i * b + j];
        res2[j] += r * r;
      }
    }
    // The rank rule on the Ritz values, the energy outside span(Q) lumped as one more value.
    double captured = 0.0;
    singular.resize(b + 1);
    for (int64_t j = 0; j < b; ++j) {
      captured += std::max(theta[j], 0.0);
      singular[j] = std::sqrt(std::max(theta[j], 0.0));
    }
    singular[b] = b < k ? std::sqrt(std::max(p.total - captured, 0.0)) : 0.0;
    RitzProblem problem;
    problem.k = k;
    problem.b = b;
    problem.theta = theta.data();
    problem.res2 = res2.data();
    problem.gram_fro2 = p.gram_fro2;
    problem.total = p.total;
    problem.energy_rank = energy_rank_of_row(singular.data(), b + 1, options.energy);
    problem.value_cut2 = p.value_cut >= 0.0 ? p.value_cut * p.value_cut : -1.0;
    problem.max_rank = options.max_rank;
    problem.want_subgradient = options.want_subgradient;
    problem.sub_floor2 = sub_floor * sub_floor * std::max(theta[0], 0.0);
    problem.tol_rank = tol.rank;
    problem.tol_proj = tol.proj;
    problem.tol_sub = tol.sub;
    const RitzCertificate certificate = certify_ritz(problem);
    if (certificate.status == kRitzCertified) {
      s.rank = certificate.rank;
      s.width = std::min(b, basis_width(s.rank, k));
      s.values.resize(s.width);
      for (int64_t j = 0; j < s.width; ++j) s.values[j] = std::max(theta[j], 0.0);
      s.vectors.resize(k * s.width);
      for (int64_t i = 0; i < k; ++i) {
        std::copy(&u[i * b], &u[i * b] + s.width, &s.vectors[i * s.width]);
      }
      return true;
    }
    if (certificate.status == kRitzNeedCold) return false;
    // Power steps still needed at the certificate's rate; G U = W E below is the first.
    int64_t needed = kMaxWarmSteps + 1;
    if (certificate.status == kRitzNotConverged && certificate.rate < kSlowestRate) {
      needed = static_cast<int64_t>(
          std::ceil(std::log(certificate.shortfall) / -std::log(certificate.rate)));
      needed = std::max<int64_t>(needed, 1);
    }
    // The Rayleigh-Ritz step after them costs one more product.
    const bool affordable = *steps_used + needed + 1 <= kMaxWarmSteps;
    int64_t next_b = b;
    if (!affordable) {
      if (widenings == kMaxWidenings || b == k) return false;
      ++widenings;
      *widened = true;
      next_b = std::min(k, b + std::max<int64_t>(4, b / 2));
      needed = 2;  // new random columns need a step to point at the top of the spectrum
    }
    // Next iterate: G U Theta^-1 = U + R Theta^-1 spans G span(Q) and is nearly orthonormal.
    const double stagnant = kStagnantRitz * std::max(theta[0], 0.0);
    q.assign(k * next_b, 0.0);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < b; ++j) {
        q[i * next_b + j] = theta[j] > stagnant ? gu[i * b + j] / theta[j] : u[i * b + j];
      }
      for (int64_t j = b; j < next_b; ++j) q[i * next_b + j] = random_unit(&random_state);
    }
    b = next_b;
    if (!orthonormalize_columns(q.data(), k, b)) return false;
    pending = needed - 1;
  }
}

at::Tensor to_output(const at::Tensor& buffer, const Problem& p, const at::Tensor& mat) {
  at::Tensor out = at::empty({p.m, p.n}, mat.options());
  out.copy_(p.transposed ? buffer.t() : buffer);
  return out;
}

void write_outputs(const at::Tensor& mat, const Problem& p, const Spectrum& s,
                   const ProjectOptions& options, double sub_floor, MatrixResult& result) {
  const int64_t k = p.k, len = p.len, r = s.rank;
  const at::TensorOptions f64 = mat.options().dtype(at::kDouble);
  at::Tensor projected = at::zeros({k, len}, f64);
  at::Tensor subgradient = options.want_subgradient ? at::zeros({k, len}, f64) : at::Tensor();
  if (r > 0) {
    std::vector<double> ur(k * r), w(r * len);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < r; ++j) ur[i * r + j] = s.vectors[i * s.width + j];
    }
    const double* a = p.a.const_data_ptr<double>();
    matmul(ur.data(), true, a, false, w.data(), r, len, k);  // W = U_r^T A
    double* pp = projected.data_ptr<double>();
    matmul(ur.data(), false, w.data(), false, pp, k, len, r);  // P = U_r W
    if (p.exponent != 0) {
      for (int64_t i = 0; i < k * len; ++i) pp[i] = std::ldexp(pp[i], p.exponent);
    }
    if (options.want_subgradient) {
      // U_r V_r^T = U_r S_r^-1 W, leaving out the values at or below the tolerance.
      const double floor2 = sub_floor * sub_floor * s.values[0];
      for (int64_t j = 0; j < r; ++j) {
        const double inv = s.values[j] > floor2 ? 1.0 / std::sqrt(s.values[j]) : 0.0;
        for (int64_t i = 0; i < k; ++i) ur[i * r + j] *= inv;
      }
      matmul(ur.data(), false, w.data(), false, subgradient.data_ptr<double>(), k, len, r);
    }
  }
  result.projected = to_output(projected, p, mat);
  if (options.want_subgradient) result.subgradient = to_output(subgradient, p, mat);
  const int64_t width = p.total > 0.0 ? std::min(s.width, basis_width(r, k)) : 0;
  at::Tensor basis = at::empty({k, width}, f64);
  double* bp = basis.data_ptr<double>();
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < width; ++j) bp[i * width + j] = s.vectors[i * s.width + j];
  }
  result.basis = basis.to(mat.scalar_type());
  result.rank = r;
}

bool all_finite(const at::Tensor& t) {
  const at::Tensor values = t.to(at::kDouble).contiguous();
  const double* v = values.const_data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    if (!std::isfinite(v[i])) return false;
  }
  return true;
}

}  // namespace

MatrixResult project_matrix(const at::Tensor& mat, const at::Tensor* basis,
                            const ProjectOptions& options, uint64_t seed) {
  MatrixResult result;
  Problem p;
  if (!load(mat, options, p)) {
    result.nonfinite_matrix = true;
    return result;
  }
  if (basis != nullptr && !all_finite(*basis)) {
    result.nonfinite_basis = true;
    return result;
  }
  const bool single = mat.scalar_type() == at::kFloat;
  const double sub_floor = subgradient_floor(single, p.m, p.n);
  Spectrum s;
  if (p.k == 0 || p.total == 0.0) {
    // Zero (or empty) matrix: rank 0, zero projection and sub-gradient, an empty basis.
    write_outputs(mat, p, s, options, sub_floor, result);
    return result;
  }
  form_gram(p);
  // A warm start needs columns, and is pointless when energy = 1 asks for every nonzero value.
  const bool try_warm = basis != nullptr && basis->size(1) > 0 && options.energy < 1.0;
  if (try_warm) {
    bool widened = false;
    if (warm_solve(p, *basis, options, warm_tolerances(single), sub_floor, seed, s,
                   &widened, &result.warm_iterations)) {
      result.path = widened ? ProjectPath::kWidened : ProjectPath::kWarm;
    } else {
      result.path = ProjectPath::kFallback;
    }
  }
  if (result.path == ProjectPath::kCold || result.path == ProjectPath::kFallback) {
    cold_solve(p, options, s);
  }
  write_outputs(mat, p, s, options, sub_floor, result);
  return result;
}

}  // namespace cpu
}  // namespace trp_ext
