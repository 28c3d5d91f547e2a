// The per-matrix rules of the batched lowrank_project over a batch: certify_ritz and
// gap_basis_width for matrix i, as raw pointers that a CUDA thread and a CPU loop read alike, so
// the CUDA kernels (cuda/lowrank_project_certify.cu) and their CPU twins
// (cpu/lowrank_project_batched_twins.cpp) run the same code, and the argument checks both make.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/batch_tensor_checks.h"
#include "common/host_device.h"
#include "common/lowrank_project_policy.h"
#include "common/ritz_certificate.h"
#include "lowrank_project_batched.h"

namespace trp_ext {

struct RitzArgs {
  int64_t count, k, b;
  const double *theta, *res2, *gram_fro2, *total, *value_cut2, *sub_floor;
  const int64_t* energy_rank;
  const bool* usable;
  int64_t max_rank;
  bool want_subgradient;
  double tol_rank, tol_proj, tol_sub;
};

// Matrix i of the batch: its rank and RitzStatus.
TRP_HOST_DEVICE inline void certify_batch_member(const RitzArgs& args, int64_t i, int64_t* rank_out,
                                                 int* status_out) {
  if (!args.usable[i]) {
    rank_out[i] = 0;
    status_out[i] = kRitzNeedCold;
    return;
  }
  RitzProblem p;
  p.k = args.k;
  p.b = args.b;
  p.theta = args.theta + i * args.b;
  p.res2 = args.res2 + i * args.b;
  p.gram_fro2 = args.gram_fro2[i];
  p.total = args.total[i];
  p.energy_rank = args.energy_rank[i];
  p.value_cut2 = args.value_cut2[i];
  p.max_rank = args.max_rank;
  p.want_subgradient = args.want_subgradient;
  // The sub-gradient's floor as a fraction of s_1, squared and in the units of theta.
  const double theta_1 = p.theta[0] < 0.0 ? 0.0 : p.theta[0];  // NaN stays NaN, as clamp_min
  p.sub_floor2 = theta_1 * (args.sub_floor[i] * args.sub_floor[i]);
  p.tol_rank = args.tol_rank;
  p.tol_proj = args.tol_proj;
  p.tol_sub = args.tol_sub;
  const RitzCertificate certificate = certify_ritz(p);
  rank_out[i] = certificate.rank;
  status_out[i] = certificate.status;
}

// Matrix i of a (count, w) batch of descending values: the width of the basis to return.
TRP_HOST_DEVICE inline void gap_width_of_member(int64_t i, int64_t w, int64_t k, const double* values,
                                                const int64_t* rank, int64_t* width_out) {
  width_out[i] = gap_basis_width(values + i * w, w, rank[i], k);
}

// The checked RitzArgs of a batch, and of the rank and status outputs, on the given device type.
inline RitzArgs ritz_args(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status,
                          c10::DeviceType device) {
  const int64_t count = batch.theta.size(0);
  const int64_t b = batch.b;
  const char* caller = "certify_ritz_batch";
  check_batch_tensor(batch.theta, at::kDouble, count * b, device, "theta", caller);
  check_batch_tensor(batch.res2, at::kDouble, count * b, device, "res2", caller);
  check_batch_tensor(batch.gram_fro2, at::kDouble, count, device, "gram_fro2", caller);
  check_batch_tensor(batch.total, at::kDouble, count, device, "total", caller);
  check_batch_tensor(batch.value_cut2, at::kDouble, count, device, "value_cut2", caller);
  check_batch_tensor(batch.sub_floor, at::kDouble, count, device, "sub_floor", caller);
  check_batch_tensor(batch.energy_rank, at::kLong, count, device, "energy_rank", caller);
  check_batch_tensor(batch.usable, at::kBool, count, device, "usable", caller);
  check_batch_tensor(rank, at::kLong, count, device, "rank", caller);
  check_batch_tensor(status, at::kInt, count, device, "status", caller);
  return RitzArgs{count,
                  batch.k,
                  b,
                  batch.theta.const_data_ptr<double>(),
                  batch.res2.const_data_ptr<double>(),
                  batch.gram_fro2.const_data_ptr<double>(),
                  batch.total.const_data_ptr<double>(),
                  batch.value_cut2.const_data_ptr<double>(),
                  batch.sub_floor.const_data_ptr<double>(),
                  batch.energy_rank.const_data_ptr<int64_t>(),
                  batch.usable.const_data_ptr<bool>(),
                  batch.max_rank,
                  batch.want_subgradient,
                  batch.tol_rank,
                  batch.tol_proj,
                  batch.tol_sub};
}

// The checked (count, w) values and (count) ranks of gap_basis_widths on the given device type.
inline void check_gap_width_args(const at::Tensor& values, const at::Tensor& rank,
                                 c10::DeviceType device) {
  TORCH_CHECK(values.dim() == 2, "gap_basis_widths: 'values' must be (B, w)");
  const int64_t count = values.size(0), w = values.size(1);
  check_batch_tensor(values, at::kDouble, count * w, device, "values", "gap_basis_widths");
  check_batch_tensor(rank, at::kLong, count, device, "rank", "gap_basis_widths");
}

}  // namespace trp_ext
