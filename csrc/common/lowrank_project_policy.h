// The numerical policy of lowrank_project, shared by its CPU and CUDA kernels: the tolerances a
// warm start is certified to, the singular-value floor of the sub-gradient, the width of the
// returned bases, and when inputs are rescaled.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/host_device.h"

namespace trp_ext {

struct WarmTolerances {
  double rank;  // slack of the top-(r-1) energy, relative to ||A||_F^2 (the contract allows 1e-6)
  double proj;  // ||P - P*||_F / ||A||_F
  double sub;   // ||S - S*||_F / ||S*||_F (the contract allows 1e-3)
};

// float32: 5x below the contract's 1e-5 floor. float64: about what a float64 Gram resolves.
inline WarmTolerances warm_tolerances(bool single_precision) {
  if (single_precision) return {1e-10, 2e-6, 1e-5};
  return {1e-10, 1e-10, 1e-8};
}

// Singular values at or below this fraction of s_1 are left out of the sub-gradient: the
// LAPACK-style rank tolerance max(m, n) eps of the dtype, and never below what the float64 Gram
// resolves to ~1e-3 relative accuracy, sqrt(1e3 (m + n) eps64) (~1e-5 for conv-weight shapes).
inline double subgradient_floor(bool single_precision, int64_t m, int64_t n) {
  const double eps64 = std::numeric_limits<double>::epsilon();
  const double eps = single_precision ? std::numeric_limits<float>::epsilon() : eps64;
  return std::max(static_cast<double>(std::max(m, n)) * eps,
                  std::sqrt(1e3 * static_cast<double>(m + n) * eps64));
}

// A cold solve counts eigenvalues of the float64 Gram at or below gram_noise_factor(k, len) *
// lambda_1 as zero: they are within the rounding of the Gram and of its eigensolver (~(k + len)
// eps lambda_1). Counted, that noise would push the rank at energy = 1 of a rank-deficient
// matrix past its numerical rank (a float64 SVD's noise, ~eps^2 lambda_1 here, vanishes in the
// sums); for every energy < 1 it lies far below the contract's 1e-6 band.
constexpr double kGramNoise = 16.0;
inline double gram_noise_factor(int64_t k, int64_t len) {
  return kGramNoise * static_cast<double>(k + len) * std::numeric_limits<double>::epsilon();
}

// A float64 matrix whose rank cut lies below this fraction of lambda_1 = s_1^2 (s_r < 1e-2 s_1),
// or whose rank at energy 1 the Gram's noise floor set (values under its rounding count as
// zero, so the first one past the rank is 0, not a cap's cut), is solved again by an SVD of A
// itself (CPU: refine_with_svd; CUDA: svd_spectrum): the Gram resolves eigenvalues only to
// ~(k + len) eps lambda_1 (gram_noise_factor), and its eigenvectors' error, divided by the gap at
// the cut, reached the projection. Measured on the CPU with the tests' checker (float64 floor
// 1e-10 of ||A||), random 1 x 1 to 90 x 90 matrices with deep, clustered, rank-deficient and
// decaying spectra: with no refinement 21 of 400 failed (up to ~1e-8: clusters at energy 1, and
// cuts at ~1e-3 s_1 with the next cluster at 1e-6), with this fraction at 1e-8 3 of 400 (those
// cuts, 1.1-4.5e-10), at 1e-4 none of 1200. TRP's float32 weights never come here.
constexpr double kGramResolvedFraction = 1e-4;

// The returned basis keeps a quarter of the rank beyond it (at least kMinOversample columns):
// they make the next warm start converge at the rate lambda_{b+1} / lambda_r per power step.
// After a projection the spectrum has a gap at the rank, and the first power step narrows the
// basis to it anyway; a wider basis (half the rank, before) only made that step dearer and, on
// the CPU, past kMaxWarmFraction of k, kept TRP's later calls from warm-starting where they win.
constexpr int64_t kMinOversample = 4;
TRP_HOST_DEVICE inline int64_t basis_width(int64_t rank, int64_t k) {
  // No std::max here: it binds kMinOversample by reference, which device code cannot.
  const int64_t quarter = (rank + 3) / 4;
  const int64_t oversample = quarter > kMinOversample ? quarter : kMinOversample;
  return std::min(k, rank + oversample);
}

// Narrower where the spectrum has a gap: the first width w >= rank + kMinOversample (and below
// basis_width) whose next eigenvalue lambda_{w+1} of the Gram matrix is at most kGapRatio *
// lambda_rank. A power step from such a basis already shrinks everything outside it by
// 1 / kGapRatio, so wider columns only cost work. TRP's weights have that gap after a
// projection (the rank-r projection plus a few SGD steps' drift). values: the eigenvalues of the
// Gram matrix (or estimates), descending; count of them known. The CUDA kernel runs it too, one
// thread per matrix, so both devices return bases of the same widths.
constexpr double kGapRatio = 1e-3;
TRP_HOST_DEVICE inline int64_t gap_basis_width(const double* values, int64_t count, int64_t rank, int64_t k) {
  const int64_t widest = basis_width(rank, k);
  if (rank <= 0 || rank > count) return widest;  // no value at the rank to compare with
  const double cut = kGapRatio * values[rank - 1];
  for (int64_t w = std::min(k, rank + kMinOversample); w < widest && w < count; ++w) {
    if (values[w] <= cut) return w;
  }
  return widest;
}

// Inputs whose largest magnitude lies outside 2^+-128 are rescaled by a power of two (exact), so
// that squares and Gram sums stay clear of overflow and underflow. The tightest of them is the
// Gram's squared norm (~ 2^(4e) k len^2 for max|a| ~ 2^e) and the squared Ritz residuals against
// it (~ eps^2 of it): at 2^+-256 the first overflowed from 2^254 on (no warm start certified)
// and fell among the subnormals near 2^-256 (warm starts certified early, 5e-10 off the cold
// result). Float32 inputs reach the rescaling only below 2^-128, where they are subnormal.
constexpr int kMaxUnscaledExponent = 128;

}  // namespace trp_ext
