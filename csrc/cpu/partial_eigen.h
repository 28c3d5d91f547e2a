// Partial symmetric eigen-decomposition: all eigenvalues, then eigenvectors for only the top m.
//
// lowrank_project needs every eigenvalue of the Gram matrix (the energy rule sums them) but
// eigenvectors for only the top r + oversampling of them, usually a third of the matrix or less.
// LAPACK's dsyevd (all ATen offers) computes every eigenvector, which is ~3/4 of its time at
// k = 192. This solver reduces to tridiagonal form by Householder reflections, finds the
// eigenvalues by implicit QL (tridiagonal_ql.h), then computes only the wanted eigenvectors of
// the tridiagonal matrix by inverse iteration (re-orthogonalised within clusters) and transforms
// them back.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/scratch_pool.h"

namespace trp_ext {
namespace cpu {

class SymmetricEigen {
 public:
  // Reduces the symmetric n x n row-major matrix a (only its upper triangle is read) and finds
  // its eigenvalues. Above kLapackFromSize, or in the (never seen) event that QL does not
  // converge, it uses LAPACK's dsyevd through ATen instead, whose blocked reduction wins there.
  void reduce(const double* a, int64_t n);

  // reduce for count matrices at once: eigens[t] reduces matrices[t] (sizes[t] x sizes[t]),
  // with the eigenvalue iterations of all of them interleaved (tridiagonal_ql.h), which keeps a
  // core busier than one at a time. Each result is bitwise what reduce gives.
  static void reduce_all(SymmetricEigen* const* eigens, const double* const* matrices,
                         const int64_t* sizes, int64_t count);

  // All n eigenvalues, descending, accurate to ~eps * ||a||.
  const std::vector<double>& values() const { return values_; }

  // The eigenvectors of values()[0..m) into out (n x m row-major; column j for values()[j]),
  // orthonormal to ~1e-13.
  void vectors(int64_t m, double* out);

  // Measured crossover on the development machine: the unblocked reduction is up to 2x faster
  // than dsyevd to n = 768 and loses at 1536.
  static constexpr int64_t kLapackFromSize = 1025;

 private:
  int64_t n_ = 0;
  bool lapack_ = false;
  ScratchVector<double> house_;  // n x n: row i holds reflector i in columns i+2..n-1
                               // (LAPACK path: all eigenvectors, n x n)
  std::vector<double> tau_;    // reflector scalars
  std::vector<double> diag_, offdiag_;  // the tridiagonal matrix
  std::vector<double> values_;
};

}  // namespace cpu
}  // namespace trp_ext
