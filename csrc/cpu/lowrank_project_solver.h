// One matrix of the CPU lowrank_project kernel: load, Gram, warm or cold eigen-solve, rank,
// projection, sub-gradient and the basis for the next call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/lowrank_project_stats.h"

namespace trp_ext {
namespace cpu {

struct ProjectOptions {
  double energy;
  double value_threshold;  // < 0 when not given
  int64_t max_rank;        // < 0 when not given
  bool want_subgradient;
};

struct MatrixResult {
  at::Tensor projected;
  at::Tensor subgradient;  // undefined unless asked for
  at::Tensor basis;
  int64_t rank = 0;
  ProjectPath path = ProjectPath::kCold;
  int64_t warm_iterations = 0;  // subspace iterations the warm start ran (0 when cold)
  bool nonfinite_matrix = false;  // the other fields are then unset
  bool nonfinite_basis = false;
};

// basis: the warm-start basis of this matrix (already validated for shape, dtype and device),
// or nullptr. seed makes the random columns of a widened basis reproducible.
MatrixResult project_matrix(const at::Tensor& mat, const at::Tensor* basis,
                            const ProjectOptions& options, uint64_t seed);

}  // namespace cpu
}  // namespace trp_ext
