// Argument checks and the error report of energy_rank, shared by its CPU and CUDA kernels.
#pragma once

#include "common/checks.h"

namespace trp_ext {

inline void check_energy_rank_args(const at::Tensor& s, double energy) {
  check_dim(s, 2, "energy_rank", "s");
  check_floating(s, "energy_rank", "s");
  TRP_CHECK_ARG(std::isfinite(energy) && energy > 0.0 && energy <= 1.0, "energy_rank", "energy",
                "must lie in (0, 1], got ", exact_number(energy));
}

// Kernels mark a row holding NaN or Inf with rank -1; this turns that into an error.
inline void raise_on_nonfinite_rows(const at::Tensor& ranks) {
  const at::Tensor bad = (ranks < 0).nonzero();
  TRP_CHECK_ARG(bad.numel() == 0, "energy_rank", "s", "has a NaN or Inf value in row ",
                bad.numel() ? bad[0][0].item<int64_t>() : -1);
}

}  // namespace trp_ext
