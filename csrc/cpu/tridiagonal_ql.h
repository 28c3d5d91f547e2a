// Eigenvalues of symmetric tridiagonal matrices by implicit QL, several matrices at once.
//
// One QL sweep is a single chain of dependent divisions and multiplications: a core runs it at
// the latency of that chain, a few percent of its throughput. Sweeps of different matrices are
// independent, so this runs up to kQlGroup of them interleaved, rotation by rotation, and the
// core overlaps their chains (measured on 192 x 192 problems: 380 us each alone, 147 us each four
// at a time). Every matrix goes through exactly the operations it would alone: the results do
// not depend on the grouping, bit for bit.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace cpu {

constexpr int kQlGroup = 4;

struct TridiagonalProblem {
  double* d = nullptr;  // n diagonal values; overwritten with the eigenvalues (unsorted)
  double* e = nullptr;  // n values, e[i] couples i and i + 1 (e[n - 1] unused); destroyed
  int64_t n = 0;
  double norm = 0.0;    // ||T||_inf (0: T is zero)
  bool converged = true;  // false: QL did not converge (d is then unusable)
};

// Solves count problems, up to kQlGroup of them interleaved at any time.
void ql_eigenvalues(TridiagonalProblem* problems, int64_t count);

}  // namespace cpu
}  // namespace trp_ext
