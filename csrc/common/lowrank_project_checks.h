// Argument checks and error reports of lowrank_project, shared by its CPU and CUDA kernels.
// Every message names the argument, and for list arguments the index of the offending entry.
#pragma once

#include <cmath>
#include <optional>

#include "common/checks.h"

namespace trp_ext {

constexpr const char* kLowrankOp = "lowrank_project";

// The side the op works on: the Gram matrix of the shorter side is k x k, k = min(rows, cols).
inline int64_t lowrank_side(const at::Tensor& mat) { return std::min(mat.size(0), mat.size(1)); }

inline void check_lowrank_project_args(at::TensorList mats, double energy,
                                       std::optional<double> value_threshold,
                                       std::optional<int64_t> max_rank,
                                       std::optional<at::TensorList> bases) {
  TRP_CHECK_ARG(!mats.empty(), kLowrankOp, "mats", "must hold at least one matrix");
  const at::Tensor& first = mats[0];
  for (size_t i = 0; i < mats.size(); ++i) {
    const at::Tensor& mat = mats[i];
    TRP_CHECK_ARG(mat.defined(), kLowrankOp, "mats", "holds an undefined tensor at index ", i);
    TRP_CHECK_ARG(mat.dim() == 2, kLowrankOp, "mats", "must hold 2-D tensors, got shape ",
                  mat.sizes(), " at index ", i);
    TRP_CHECK_ARG_TYPE(mat.scalar_type() == at::kFloat || mat.scalar_type() == at::kDouble,
                       kLowrankOp, "mats", "must hold float32 or float64 tensors, got ",
                       mat.scalar_type(), " at index ", i);
    TRP_CHECK_ARG_TYPE(mat.scalar_type() == first.scalar_type(), kLowrankOp, "mats",
                       "must hold tensors of one dtype, got ", first.scalar_type(),
                       " at index 0 and ", mat.scalar_type(), " at index ", i);
    TRP_CHECK_ARG(mat.device() == first.device(), kLowrankOp, "mats",
                  "must hold tensors on one device, got ", first.device(), " at index 0 and ",
                  mat.device(), " at index ", i);
  }
  TRP_CHECK_ARG(std::isfinite(energy) && energy > 0.0 && energy <= 1.0, kLowrankOp, "energy",
                "must lie in (0, 1], got ", exact_number(energy));
  if (value_threshold.has_value()) {
    TRP_CHECK_ARG(!std::isnan(*value_threshold) && *value_threshold >= 0.0, kLowrankOp,
                  "value_threshold", "must be None or >= 0, got ", exact_number(*value_threshold));
  }
  if (max_rank.has_value()) {
    TRP_CHECK_ARG(*max_rank >= 0, kLowrankOp, "max_rank", "must be None or >= 0, got ",
                  *max_rank);
  }
  if (!bases.has_value()) return;
  TRP_CHECK_ARG(bases->size() == mats.size(), kLowrankOp, "bases",
                "must hold one basis per matrix (the 'bases' a previous call returned for the "
                "same list), got ", bases->size(), " for ", mats.size(), " matrices");
  for (size_t i = 0; i < bases->size(); ++i) {
    const at::Tensor& basis = (*bases)[i];
    TRP_CHECK_ARG(basis.defined(), kLowrankOp, "bases", "holds an undefined tensor at index ", i);
    const int64_t k = lowrank_side(mats[i]);
    TRP_CHECK_ARG(basis.dim() == 2 && basis.size(0) == k && basis.size(1) <= k, kLowrankOp,
                  "bases", "does not fit matrix ", i, " of shape ", mats[i].sizes(),
                  ": expected shape (", k, ", b) with b <= ", k, ", got ", basis.sizes(),
                  " (pass the bases of a call on the same list of shapes)");
    TRP_CHECK_ARG_TYPE(basis.scalar_type() == mats[i].scalar_type(), kLowrankOp, "bases",
                       "must match the dtype of 'mats', got ", basis.scalar_type(),
                       " at index ", i, " for ", mats[i].scalar_type());
    TRP_CHECK_ARG(basis.device() == mats[i].device(), kLowrankOp, "bases",
                  "must be on the device of 'mats', got ", basis.device(), " at index ", i,
                  " for ", mats[i].device());
  }
}

// Raised after a kernel has flagged a matrix (or a basis) holding NaN or Inf; `index` is the
// lowest flagged index.
inline void raise_nonfinite(const char* arg, int64_t index) {
  TRP_CHECK_ARG(false, kLowrankOp, arg, "has a NaN or Inf value in ",
                std::string(arg) == "mats" ? "matrix " : "basis ", index);
}

}  // namespace trp_ext
