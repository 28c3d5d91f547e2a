// The matrices of the CPU lowrank_project kernel, a few at a time (see lowrank_project_solver.h).
//
// The matrix A (k x len, k = the shorter side) is loaded as float64 and scaled by a power of two.
// Its Gram matrix G = A A^T is formed in float64: a float32 Gram would square the condition
// number and lose the small singular values the contract checks. The top eigenpairs of G give
// U_r, and P = U_r (U_r^T A), the sub-gradient U_r V_r^T = U_r S_r^-1 (U_r^T A): V is never formed.
//
// Cold: the full eigen-decomposition of G (those of a group of matrices together, see
// cold_solve_all). Warm: subspace iteration on G from the previous
// call's basis, then Rayleigh-Ritz, certified by common/ritz_certificate.h; a basis that does
// not hold the energy is widened, and a warm start that cannot be certified falls back to cold.
// A float64 matrix cut below the Gram's reach is solved again by an SVD of A (refine_with_svd).
#include "cpu/lowrank_project_solver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/energy_rule.h"
#include "common/lowrank_project_policy.h"
#include "common/ritz_certificate.h"
#include "cpu/lowrank_linalg.h"
#include "cpu/partial_eigen.h"
#include "cpu/pseudo_random.h"
#include "cpu/scratch_pool.h"
#include "cpu/simd.h"
#include "cpu/tiled_transpose.h"

namespace trp_ext {
namespace cpu {
namespace {

// A warm start gives up (-> cold solve) once it would cost more than kWarmBudget cold solves: a
// product with a k x b basis and the Rayleigh-Ritz work around it cost roughly b / k of a cold
// solve (measured at b / k ~ 0.44: one power step and one Rayleigh-Ritz step ~ 60% of it). At
// least two products are always allowed: the step every drifted basis needs, and one check.
constexpr double kWarmBudget = 1.3;
constexpr int64_t kMaxWarmSteps = 24;  // a safety net: the cost budget is the real limit
constexpr int kMaxWidenings = 2;
// A warm start runs only from a basis of at most this fraction of k, and widens it only while it
// stays so: wider, the warm start costs more than the cold solve it would replace (its QR and
// Rayleigh-Ritz grow as k b^2 and b^3). Measured per matrix on ResNet-56 weights of real TRP
// training (CIFAR-10, energy 0.99, one thread), cold / warm time: 0.94-1.46 (median 1.18) at
// b / k <= 0.35, 0.63-1.17 (median ~0.85) at 0.44-0.50 although every one certified in two
// products, 0.6-1.1 from 0.6 on. Early in training (lr 0.1, step 120) the ranks at energy 0.99
// reach 0.6-0.9 k. The bench's synthetic spectra give bases of ~0.36 k from a cold call
// (rank + rank / 4, see basis_width) and ~0.3 k after a warm one: 1.2-1.7x.
constexpr double kMaxWarmFraction = 0.4;
// Below this size a cold solve is cheaper than a warm start, so smaller matrices are solved cold
// even when a basis is given. Measured on ResNet-56 sets after a projection and a drift (one
// thread, warm and cold calls alternated), cold / warm time: k = 16 0.76-0.82, k = 32 0.97-0.99
// (the ~10 GEMM and QR calls of one power step and Rayleigh-Ritz cost as much as the whole
// partial eigensolver), k = 48 1.29-1.31, k = 64 1.21-1.22.
constexpr int64_t kWarmMinSize = 48;
// A residual that contracts slower than this per power step is not worth iterating on: widen.
constexpr double kSlowestRate = 0.5;
// Ritz values (or column norms of G Q) below this fraction of the largest do not advance in the
// next iterate: dividing by them would only amplify rounding, and their directions hold no
// energy worth resolving.
constexpr double kStagnantRitz = 1e-12;

// The matrix as k x len float64 (transposed when it has more rows than columns), scaled.
struct Problem {
  int64_t m = 0, n = 0, k = 0, len = 0;
  bool transposed = false;
  ScratchArray a;               // k x len: mat (or mat^T) * 2^-exponent (no zero-fill pass)
  const float* a32 = nullptr;   // instead of `a`, until float64_rows makes it: float32 rows as
                                // given (not transposed, not rescaled)
  int exponent = 0;
  double max_abs = 0.0;       // of the matrix as given
  double total = 0.0;         // ||a||_F^2
  ScratchVector<double> gram;  // k x k
  double gram_fro2 = 0.0;     // ||gram||_F^2
  double value_cut = -1.0;    // value_threshold in the units of a; < 0 when not given
};

// The top eigenpairs of the Gram matrix, descending, and the rank chosen from them.
struct Spectrum {
  int64_t width = 0;
  std::vector<double> values;   // width
  ScratchVector<double> vectors;  // k x width
  int64_t rank = 0;
};

// One pass: the values' Scan, and (unless dst is null) the values as float64 into dst.
TRP_INLINE simd::Scan scan_float_impl(const float* src, int64_t size, double* dst) {
  return simd::scan_values(src, size, dst);
}
TRP_CPU_DISPATCH(simd::Scan, scan_float, (const float* src, int64_t size, double* dst),
                 (src, size, dst))
TRP_INLINE simd::Scan scan_double_impl(const double* src, int64_t size, double* dst) {
  return simd::scan_values(src, size, dst);
}
TRP_CPU_DISPATCH(simd::Scan, scan_double, (const double* src, int64_t size, double* dst),
                 (src, size, dst))
TRP_INLINE double sum_of_squares_impl(const double* a, int64_t size) {
  return simd::sum_squares(a, size);
}
TRP_CPU_DISPATCH(double, sum_of_squares, (const double* a, int64_t size), (a, size))

simd::Scan scan(const float* src, int64_t size, double* dst) {
  return scan_float(src, size, dst);
}
simd::Scan scan(const double* src, int64_t size, double* dst) {
  return scan_double(src, size, dst);
}

// dst (k x len, row-major) = src as float64, and its Scan: src is the row-major k x len matrix
// (converted and scanned in one pass), or with `transposed` the row-major len x k one.
template <typename T>
simd::Scan to_double_rows(const T* src, bool transposed, int64_t k, int64_t len, double* dst) {
  if (transposed) {
    transpose_tiled(src, len, k, dst, len);
    return scan(dst, k * len, nullptr);
  }
  return scan(src, k * len, dst);
}

// The matrix as float64 rows (Problem::a), made from the float32 rows on first use.
double* float64_rows(Problem& p) {
  if (!p.a) {
    const int64_t size = p.k * p.len;
    p.a = scratch_array(size);
    double* a = p.a.get();
    for (int64_t i = 0; i < size; ++i) a[i] = static_cast<double>(p.a32[i]);
    p.a32 = nullptr;
  }
  return p.a.get();
}

// Returns false when the matrix (contiguous) holds NaN or Inf.
bool load(const at::Tensor& mat, const ProjectOptions& options, Problem& p) {
  p.m = mat.size(0);
  p.n = mat.size(1);
  p.transposed = p.m > p.n;
  p.k = std::min(p.m, p.n);
  p.len = std::max(p.m, p.n);
  const int64_t size = p.k * p.len;
  const bool single = mat.scalar_type() == at::kFloat;
  simd::Scan values;
  if (single && !p.transposed) {
    // Float32 rows are read where they are: the Gram converts them as it reads (exactly), and
    // the float64 copy, twice the matrix's bytes to write and read again, is made only for the
    // rare products that need it (float64_rows). ResNet weights in both schemes come here.
    p.a32 = mat.const_data_ptr<float>();
    values = scan(p.a32, size, nullptr);
  } else {
    // Converted by hand rather than by at::Tensor::copy_, whose dispatch and iterator set-up
    // cost microseconds per call: a ResNet has dozens of layers as small as 16 x 144.
    p.a = scratch_array(size);
    double* a = p.a.get();
    values = single ? to_double_rows(mat.const_data_ptr<float>(), p.transposed, p.k, p.len, a)
                    : to_double_rows(mat.const_data_ptr<double>(), p.transposed, p.k, p.len, a);
  }
  if (!values.finite) return false;
  p.max_abs = values.max_abs;
  p.total = values.sum_squares;
  if (values.max_abs > 0.0) {
    int exponent = 0;
    std::frexp(values.max_abs, &exponent);
    if (std::abs(exponent) > kMaxUnscaledExponent) {
      // ldexp per element: 2^-exponent itself overflows for subnormal-only matrices. The
      // squares of the unscaled values could over- or underflow: summed again.
      p.exponent = exponent;
      double* a = float64_rows(p);
      for (int64_t i = 0; i < size; ++i) a[i] = std::ldexp(a[i], -exponent);
      p.total = sum_of_squares(a, size);
    }
  }
  if (options.value_threshold >= 0.0) p.value_cut = std::ldexp(options.value_threshold, -p.exponent);
  return true;
}

void form_gram(Problem& p) {
  const int64_t k = p.k;
  p.gram.resize(k * k);
  if (p.a) {
    gram(p.a.get(), k, p.len, p.gram.data());  // exactly symmetric
  } else {
    gram(p.a32, k, p.len, p.gram.data());  // the same values
  }
  p.gram_fro2 = sum_of_squares(p.gram.data(), k * k);
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

// The cold solve of a matrix whose Gram eigen-decomposition `eigen` has reduced.
void cold_solve_reduced(SymmetricEigen& eigen, const Problem& p, const ProjectOptions& options,
                        Spectrum& s) {
  std::vector<double> values = eigen.values();
  // G is PSD; eigenvalues within its rounding count as zero (see gram_noise_factor).
  const double noise = values.empty() ? 0.0 : gram_noise_factor(p.k, p.len) * values[0];
  for (double& v : values) v = v > noise ? v : 0.0;
  s.rank = rank_of_spectrum(values, p, options);
  // Vectors only for the rank and the oversampling the returned basis keeps (less past a gap).
  s.width = gap_basis_width(values.data(), static_cast<int64_t>(values.size()), s.rank, p.k);
  s.values.assign(values.begin(), values.begin() + s.width);
  s.vectors.resize(p.k * s.width);
  eigen.vectors(s.width, s.vectors.data());
}

// The cold solves of several matrices, their eigenvalue iterations interleaved
// (SymmetricEigen::reduce_all): each result is bitwise what a cold solve of it alone gives.
void cold_solve_all(const std::vector<const Problem*>& problems, const ProjectOptions& options,
                    const std::vector<Spectrum*>& spectra) {
  const int64_t count = static_cast<int64_t>(problems.size());
  std::vector<SymmetricEigen> eigens(count);
  std::vector<SymmetricEigen*> eigen_ptrs(count);
  std::vector<const double*> grams(count);
  std::vector<int64_t> sizes(count);
  for (int64_t t = 0; t < count; ++t) {
    eigen_ptrs[t] = &eigens[t];
    grams[t] = problems[t]->gram.data();
    sizes[t] = problems[t]->k;
  }
  SymmetricEigen::reduce_all(eigen_ptrs.data(), grams.data(), sizes.data(), count);
  for (int64_t t = 0; t < count; ++t) {
    cold_solve_reduced(eigens[t], *problems[t], options, *spectra[t]);
  }
}

// The width a basis whose columns have Rayleigh quotients q_j^T G q_j = quotient[j] needs (see
// gap_basis_width), and the order of its columns by them. The previous call's basis holds
// (nearly) eigenvectors, so the quotients estimate the spectrum to second order in the drift:
// the rank of their energy, then the gap after it. (The norms ||G q_j|| would not do: a column
// outside the top subspace leaks drift x lambda_1 into it, far above its own eigenvalue, and
// hides the gap.) A wrong estimate costs work only: Rayleigh-Ritz certifies the result, and
// widens when it must.
int64_t gap_width_of_columns(const Problem& p, const ProjectOptions& options,
                             const std::vector<double>& quotient, std::vector<int64_t>& order) {
  const int64_t b = static_cast<int64_t>(quotient.size());
  order.resize(b);
  for (int64_t j = 0; j < b; ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return quotient[a] > quotient[c]; });
  // The rank rule on the estimated singular values, the energy outside the basis lumped as one
  // more value, as Rayleigh-Ritz does with its Ritz values (warm_solve).
  std::vector<double> estimate(b), singular(b + 1);
  double captured = 0.0;
  for (int64_t j = 0; j < b; ++j) {
    estimate[j] = std::max(quotient[order[j]], 0.0);
    captured += estimate[j];
    singular[j] = std::sqrt(estimate[j]);
  }
  singular[b] = std::sqrt(std::max(p.total - captured, 0.0));
  const int64_t rank = energy_rank_of_row(singular.data(), b + 1, options.energy);
  if (rank < 0) return b;  // a non-finite estimate: no narrowing
  return std::min(b, gap_basis_width(estimate.data(), b, std::min(b, rank), p.k));
}

// One power step q <- orth(G q). The columns of G q are first scaled to unit norm: q's columns
// track Ritz vectors, so the scaled block is nearly orthonormal and Cholesky QR is exact enough.
// A column that G nearly annihilates keeps its old direction (its eigenvalues hold no energy).
// With `narrow`, columns past a gap in the spectrum their quotients estimate are dropped first
// (the basis of the previous call was sized for a spectrum without one), and *b shrinks.
bool power_step(const Problem& p, const ProjectOptions& options, bool narrow,
                ScratchVector<double>& q, int64_t* b_inout, ScratchVector<double>& work) {
  const int64_t k = p.k;
  int64_t b = *b_inout;
  work.resize(k * b);
  matmul(p.gram.data(), false, q.data(), false, work.data(), k, b, k);
  std::vector<double> norm2(b, 0.0), quotient(b, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < b; ++j) {
      norm2[j] += work[i * b + j] * work[i * b + j];
      quotient[j] += q[i * b + j] * work[i * b + j];
    }
  }
  std::vector<int64_t> order;
  const int64_t width = narrow ? gap_width_of_columns(p, options, quotient, order) : b;
  if (width < b) {  // keep the columns with the largest quotients, in that order
    ScratchVector<double> kept_q(k * width), kept_work(k * width);
    std::vector<double> kept_norm2(width);
    for (int64_t j = 0; j < width; ++j) kept_norm2[j] = norm2[order[j]];
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < width; ++j) {
        kept_q[i * width + j] = q[i * b + order[j]];
        kept_work[i * width + j] = work[i * b + order[j]];
      }
    }
    q.swap(kept_q);
    work.swap(kept_work);
    norm2.swap(kept_norm2);
    b = width;
    *b_inout = b;
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
// when the rate is too slow or the basis misses energy, and gives up (-> cold solve) when that
// would exceed kWarmBudget cold solves or a basis of kMaxWarmFraction of k.
bool warm_solve(const Problem& p, const at::Tensor& basis, const ProjectOptions& options,
                const WarmTolerances& tol, double sub_floor, uint64_t seed, Spectrum& s,
                bool* widened, int64_t* steps_used) {
  const int64_t k = p.k;
  int64_t b = basis.size(1);
  ScratchVector<double> q(k * b), work, gq, u, gu;  // k x b
  std::vector<double> h, e, res2, singular;
  // The basis needs no orthonormalisation of its own: it was orthonormal to its dtype's rounding
  // when returned, and the first power step orthonormalises G Q anyway.
  at::from_blob(q.data(), {k, b}, at::TensorOptions(at::kDouble)).copy_(basis);
  SymmetricEigen eigen;
  uint64_t random_state = seed * 0x2545F4914F6CDD1DULL + 1;
  int widenings = 0;
  // Any drift since the basis was computed needs at least one step before Rayleigh-Ritz.
  int64_t pending = 1;
  double spent = 0.0;  // in cold solves
  auto affordable = [&](int64_t products) {
    return *steps_used + products <= 2 ||
           (*steps_used + products <= kMaxWarmSteps &&
            spent + static_cast<double>(products * b) / static_cast<double>(k) <= kWarmBudget);
  };
  auto pay = [&]() {
    ++*steps_used;
    spent += static_cast<double>(b) / static_cast<double>(k);
  };
  for (;;) {
    for (; pending > 0; --pending) {
      if (!affordable(1)) return false;
      pay();
      // Narrowed once, on the first step: later steps follow widenings, which must stay.
      if (!power_step(p, options, *steps_used == 1, q, &b, work)) return false;
    }
    if (!affordable(1)) return false;
    pay();
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
      s.width = std::min(b, gap_basis_width(theta.data(), b, s.rank, k));
      s.values.resize(s.width);
      for (int64_t j = 0; j < s.width; ++j) s.values[j] = std::max(theta[j], 0.0);
      s.vectors.resize(k * s.width);
      for (int64_t i = 0; i < k; ++i) {
        std::copy(&u[i * b], &u[i * b] + s.width, &s.vectors[i * s.width]);
      }
      return true;
    }
    if (certificate.status == kRitzNeedCold) return false;
    // Power steps still needed at the certificate's rate; G U = W E below is the first. The
    // Rayleigh-Ritz step after them costs one more product.
    int64_t needed = kMaxWarmSteps + 1;
    if (certificate.status == kRitzNotConverged && certificate.rate < kSlowestRate) {
      needed = static_cast<int64_t>(
          std::ceil(std::log(certificate.shortfall) / -std::log(certificate.rate)));
      needed = std::max<int64_t>(needed, 1);
    }
    int64_t next_b = b;
    if (!affordable(needed)) {
      next_b = std::min(k, b + std::max<int64_t>(4, b / 2));
      if (widenings == kMaxWidenings || next_b > kMaxWarmFraction * k) return false;
      ++widenings;
      *widened = true;
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

// P = U_r (U_r^T A) and the sub-gradient U_r S_r^-1 (U_r^T A), in mat's orientation, as T,
// written straight into the output tensors. T = float: float32 inputs multiplied in float32
// straight from mat, unscaled (the rescaled ones, below 2^-128, take float64 products: see
// kFloatProductFloor); rounding adds ~sqrt(r) eps32 ~ 1e-6 relative, within the contract next
// to the certified tolerance, at twice the GEMM speed.
// T = double (float64 inputs, and float32 ones write_outputs sends here): the rescaled float64
// copy, scaled back.
template <typename T>
void write_products(const at::Tensor& mat, const Problem& p, const Spectrum& s,
                    const ProjectOptions& options, double sub_floor, MatrixResult& result) {
  const int64_t k = p.k, len = p.len, r = s.rank;
  constexpr bool single = std::is_same_v<T, float>;
  ScratchVector<T> ur(k * r);  // U_r, k x r
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < r; ++j) ur[i * r + j] = static_cast<T>(s.vectors[i * s.width + j]);
  }
  // A (k x len): mat itself (contiguous), or stored as mat = A^T (len x k) when transposed;
  // float64 inputs use the rescaled copy, always k x len.
  const T* a = nullptr;
  bool a_transposed = false;
  if constexpr (single) {
    a = mat.const_data_ptr<float>();
    a_transposed = p.transposed;
  } else {
    a = p.a.get();  // write_outputs made it for float32 inputs (float64_rows)
    TORCH_INTERNAL_ASSERT(a != nullptr, "lowrank_project: no float64 rows for float64 products");
  }
  ScratchVector<T> w(r * len);  // U_r^T A
  matmul(ur.data(), true, a, a_transposed, w.data(), r, len, k);
  // out = U_r right (k x len), or its transpose right^T U_r^T (len x k) in mat's orientation.
  auto product = [&](const ScratchVector<T>& right, at::Tensor& out) {
    out = at::empty({p.m, p.n}, mat.options().dtype(c10::CppTypeToScalarType<T>::value));
    T* o = out.data_ptr<T>();
    if (p.transposed) {
      matmul(right.data(), true, ur.data(), true, o, len, k, r);
    } else {
      matmul(ur.data(), false, right.data(), false, o, k, len, r);
    }
  };
  product(w, result.projected);
  if (!single && p.exponent != 0) {
    T* o = result.projected.data_ptr<T>();
    for (int64_t i = 0; i < k * len; ++i) o[i] = std::ldexp(o[i], p.exponent);
  }
  if (options.want_subgradient) {
    // U_r V_r^T = U_r (S_r^-1 W), leaving out the values at or below the tolerance; scale-free,
    // so there is no exponent to undo. The rows of W are scaled (to ~unit size) rather than the
    // columns of U_r: 1 / s_j overflows float32 for a float32 matrix with s_j below ~3e-39.
    const double floor2 = sub_floor * sub_floor * s.values[0];
    ScratchVector<T> v_rows(r * len);  // S_r^-1 W = V_r^T
    for (int64_t j = 0; j < r; ++j) {
      const double inverse = s.values[j] > floor2 ? 1.0 / std::sqrt(s.values[j]) : 0.0;
      for (int64_t l = 0; l < len; ++l) {
        v_rows[j * len + l] = static_cast<T>(static_cast<double>(w[j * len + l]) * inverse);
      }
    }
    product(v_rows, result.subgradient);
  }
}

// float32 products of a matrix whose entries could sum past this (2^120, FLT_MAX / 2^8) run in
// float64 (write_outputs).
constexpr double kFloatProductLimit = 0x1p120;
// So do those of a matrix whose largest entry is below this: below 2^-100, entries and products
// 2^-24 of it fall among float32's subnormals (from 2^-126), which hold fewer significant bits;
// the rounding of both products there cost up to 14x the error of a float32 SVD (entries ~2^-140).
constexpr double kFloatProductFloor = 0x1p-100;
// And so do those of a float32 sub-gradient that keeps a singular value below this fraction of
// s_1: V_r^T = S_r^-1 (U_r^T A) amplifies the float32 rounding of U_r^T A by s_1 / s_j. Measured
// (clustered spectra at energy 1, 31 x 31 and 63 x 63): errors ~0.2 eps32 s_1 / s_j, 1.2-3.5e-3
// at s_j ~ 1e-5 s_1 against the contract's 1e-3; from 1e-3 s_1 on, float32 keeps them at ~3e-5
// or less (TRP's ranks stop near 0.1 s_1).
constexpr double kFloatSubgradientFloor = 1e-3;

template <typename T>
at::Tensor basis_tensor(const at::Tensor& mat, const Spectrum& s, int64_t k, int64_t width) {
  at::Tensor basis = at::empty({k, width}, mat.options());
  T* b = basis.data_ptr<T>();
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < width; ++j) b[i * width + j] = static_cast<T>(s.vectors[i * s.width + j]);
  }
  return basis;
}

// Whether a float32 matrix's products must run in float64 (see the constants above).
bool needs_float64_products(const Problem& p, const Spectrum& s, const ProjectOptions& options,
                            double sub_floor) {
  if (p.max_abs * std::sqrt(static_cast<double>(p.k)) > kFloatProductLimit ||
      p.max_abs < kFloatProductFloor) {
    return true;
  }
  if (!options.want_subgradient) return false;
  // The smallest value the sub-gradient keeps (write_products' rule), against s_1: in squares.
  const double floor2 = sub_floor * sub_floor * s.values[0];
  double smallest = s.values[0];
  for (int64_t j = 0; j < s.rank; ++j) {
    if (s.values[j] > floor2) smallest = std::min(smallest, s.values[j]);
  }
  return smallest < kFloatSubgradientFloor * kFloatSubgradientFloor * s.values[0];
}

void write_outputs(const at::Tensor& mat, Problem& p, const Spectrum& s,
                   const ProjectOptions& options, double sub_floor, MatrixResult& result) {
  const int64_t k = p.k, r = s.rank;
  const bool single = mat.scalar_type() == at::kFloat;
  if (r == 0) {
    result.projected = at::zeros({p.m, p.n}, mat.options());
    if (options.want_subgradient) result.subgradient = at::zeros({p.m, p.n}, mat.options());
  } else if (single && needs_float64_products(p, s, options, sub_floor)) {
    // Entries of U_r^T A reach sqrt(k) max|a|: in float32 they would overflow to Inf for a
    // finite matrix, or, for a tiny one, lose bits among the subnormals; and a sub-gradient
    // divides them by its smallest values. Multiplied in float64 (from the float64 copy), then
    // rounded, as on CUDA.
    float64_rows(p);
    write_products<double>(mat, p, s, options, sub_floor, result);
    result.projected = result.projected.to(at::kFloat);
    if (options.want_subgradient) result.subgradient = result.subgradient.to(at::kFloat);
  } else if (single) {
    write_products<float>(mat, p, s, options, sub_floor, result);
  } else {
    write_products<double>(mat, p, s, options, sub_floor, result);
  }
  const int64_t width = p.total > 0.0 ? std::min(s.width, basis_width(r, k)) : 0;
  result.basis = single ? basis_tensor<float>(mat, s, k, width) : basis_tensor<double>(mat, s, k, width);
  result.rank = r;
}

bool all_finite(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) {  // the usual basis: no copy
    const float* v = t.const_data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (!std::isfinite(v[i])) return false;
    }
    return true;
  }
  const at::Tensor values = t.to(at::kDouble).contiguous();
  const double* v = values.const_data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    if (!std::isfinite(v[i])) return false;
  }
  return true;
}

// A float64 matrix cut below the Gram's reach (kGramResolvedFraction in
// common/lowrank_project_policy.h) is solved again by LAPACK's SVD of A (refine_with_svd).
bool needs_svd_refinement(const at::Tensor& mat, const Problem& p, const Spectrum& s,
                          const ProjectOptions& options) {
  if (mat.scalar_type() != at::kDouble || s.rank == 0) return false;
  if (s.values[s.rank - 1] < kGramResolvedFraction * s.values[0]) return true;
  // At energy 1 the rank counts the nonzero values; a zero past it was the Gram's noise floor
  // (or, the basis ending at the rank, may have been). Warm starts never run at energy 1.
  return options.energy >= 1.0 && s.rank < p.k && (s.width == s.rank || s.values[s.rank] == 0.0);
}

// The spectrum of A from LAPACK's SVD (through ATen) instead of the Gram: values s_i^2, with
// singular values at or below max(k, len) eps s_1 counted as zero (a float64 SVD's own rounding,
// numpy's rank rule), then the rank rule and the basis width as a cold solve has them.
void refine_with_svd(const Problem& p, const ProjectOptions& options, Spectrum& s) {
  const at::Tensor a = at::from_blob(p.a.get(), {p.k, p.len}, at::TensorOptions().dtype(at::kDouble));
  const auto [u, singular, vh] = at::linalg_svd(a, /*full_matrices=*/false);
  const at::Tensor u_rows = u.contiguous();
  const double* sv = singular.const_data_ptr<double>();
  const double tolerance =
      static_cast<double>(std::max(p.k, p.len)) * std::numeric_limits<double>::epsilon() * sv[0];
  std::vector<double> values(p.k);
  for (int64_t i = 0; i < p.k; ++i) values[i] = sv[i] > tolerance ? sv[i] * sv[i] : 0.0;
  s.rank = rank_of_spectrum(values, p, options);
  s.width = gap_basis_width(values.data(), p.k, s.rank, p.k);
  s.values.assign(values.begin(), values.begin() + s.width);
  s.vectors.resize(p.k * s.width);
  const double* uv = u_rows.const_data_ptr<double>();  // k x k, row-major
  for (int64_t i = 0; i < p.k; ++i) {
    for (int64_t j = 0; j < s.width; ++j) s.vectors[i * s.width + j] = uv[i * p.k + j];
  }
}

// One matrix of project_matrices, between its phases.
struct MatrixJob {
  at::Tensor mat;
  Problem p;
  Spectrum s;
  double sub_floor = 0.0;
  bool needs_cold = false;
  bool done = false;  // its result is complete (a non-finite input, or a zero matrix)
};

// Everything up to the cold solve: load, checks, the Gram and the warm start; then needs_cold
// says whether the cold solve must follow.
void start_job(const MatrixTask& task, const ProjectOptions& options, MatrixJob& job,
               MatrixResult& result) {
  // load and write_outputs read the matrix row-major (a copy only for a non-contiguous input).
  job.mat = task.mat->contiguous();
  Problem& p = job.p;
  if (!load(job.mat, options, p)) {
    result.nonfinite_matrix = true;
    job.done = true;
    return;
  }
  const at::Tensor* basis = task.basis;
  if (basis != nullptr && !all_finite(*basis)) {
    result.nonfinite_basis = true;
    job.done = true;
    return;
  }
  const bool single = job.mat.scalar_type() == at::kFloat;
  job.sub_floor = subgradient_floor(single, p.m, p.n);
  if (p.k == 0 || p.total == 0.0) {
    // Zero (or empty) matrix: rank 0, zero projection and sub-gradient, an empty basis.
    write_outputs(job.mat, p, job.s, options, job.sub_floor, result);
    job.done = true;
    return;
  }
  form_gram(p);
  if (tries_warm_start(*task.mat, basis, options)) {
    bool widened = false;
    if (warm_solve(p, *basis, options, warm_tolerances(single), job.sub_floor, task.seed, job.s,
                   &widened, &result.warm_iterations)) {
      result.path = widened ? ProjectPath::kWidened : ProjectPath::kWarm;
    } else {
      result.path = ProjectPath::kFallback;
    }
  }
  job.needs_cold = result.path == ProjectPath::kCold || result.path == ProjectPath::kFallback;
}

}  // namespace

void project_matrices(const MatrixTask* tasks, int64_t count, const ProjectOptions& options,
                      MatrixResult* results) {
  std::vector<MatrixJob> jobs(count);
  std::vector<const Problem*> cold_problems;
  std::vector<Spectrum*> cold_spectra;
  for (int64_t t = 0; t < count; ++t) {
    results[t] = MatrixResult{};  // the caller's may hold (moved-from) earlier results
    start_job(tasks[t], options, jobs[t], results[t]);
    if (!jobs[t].done && jobs[t].needs_cold) {
      cold_problems.push_back(&jobs[t].p);
      cold_spectra.push_back(&jobs[t].s);
    }
  }
  if (!cold_problems.empty()) cold_solve_all(cold_problems, options, cold_spectra);
  for (int64_t t = 0; t < count; ++t) {
    MatrixJob& job = jobs[t];
    if (job.done) continue;
    if (needs_svd_refinement(job.mat, job.p, job.s, options)) refine_with_svd(job.p, options, job.s);
    write_outputs(job.mat, job.p, job.s, options, job.sub_floor, results[t]);
  }
}

bool tries_warm_start(const at::Tensor& mat, const at::Tensor* basis,
                      const ProjectOptions& options) {
  // A warm start needs columns, is pointless when energy = 1 asks for every nonzero value, and
  // loses to a cold solve on small matrices and from wide bases.
  const int64_t k = std::min(mat.size(0), mat.size(1));
  return basis != nullptr && basis->size(1) > 0 && options.energy < 1.0 && k >= kWarmMinSize &&
         static_cast<double>(basis->size(1)) <= kMaxWarmFraction * static_cast<double>(k);
}

}  // namespace cpu
}  // namespace trp_ext
