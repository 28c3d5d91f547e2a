// Matrices of the CPU lowrank_project kernel, a few at a time: load, Gram, warm or cold
// eigen-solve, rank, projection, sub-gradient and the basis for the next call.
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

// One matrix of project_matrices. basis: its warm-start basis (already validated for shape,
// dtype and device), or nullptr. seed makes the random columns of a widened basis reproducible.
struct MatrixTask {
  const at::Tensor* mat;
  const at::Tensor* basis;
  uint64_t seed;
};

// Whether a matrix tries a warm start from `basis` (else it solves cold at once).
bool tries_warm_start(const at::Tensor& mat, const at::Tensor* basis,
                      const ProjectOptions& options);

// Projects each task's matrix into results[t]. Their cold solves run together, with their
// eigenvalue iterations interleaved (a core runs one matrix's at the latency of its divisions);
// each result is bitwise what the matrix gives on its own. Meant for a few matrices that solve
// cold (kQlGroup): their buffers are all held at once, which costs warm starts more than it gives.
void project_matrices(const MatrixTask* tasks, int64_t count, const ProjectOptions& options,
                      MatrixResult* results);

}  // namespace cpu
}  // namespace trp_ext
