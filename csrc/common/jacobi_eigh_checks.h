// Argument checks of the private _jacobi_eigh op, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/jacobi_rotation.h"

namespace trp_ext {

inline void check_jacobi_eigh_args(const at::Tensor& matrices) {
  constexpr const char* op = "_jacobi_eigh";
  TRP_CHECK_ARG_TYPE(matrices.scalar_type() == at::kDouble, op, "matrices", "must be float64, got ",
                     matrices.scalar_type());
  TRP_CHECK_ARG(matrices.dim() == 3 && matrices.size(1) == matrices.size(2), op, "matrices",
                "must be a (B, n, n) batch of square matrices, got shape ", matrices.sizes());
  TRP_CHECK_ARG(matrices.size(1) <= kJacobiMaxSize, op, "matrices", "holds ", matrices.size(1),
                " x ", matrices.size(1), " matrices, past the solver's largest, ", kJacobiMaxSize);
}

}  // namespace trp_ext
