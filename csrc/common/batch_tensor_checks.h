// Host-side checks of the tensors the batched lowrank_project passes to its own kernels (CUDA
// launchers and CPU twins alike): a mistake there is a bug of the caller, reported by name.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/batched_bases.h"
#include "common/batched_load.h"
#include "common/batched_outputs.h"

namespace trp_ext {

// A contiguous tensor of the given dtype, size and device type, else an error naming the caller
// and the tensor.
inline void check_batch_tensor(const at::Tensor& t, at::ScalarType dtype, int64_t numel,
                               c10::DeviceType device, const char* name, const char* caller) {
  TORCH_CHECK(t.device().type() == device && t.is_contiguous() && t.scalar_type() == dtype &&
                  t.numel() == numel,
              caller, ": '", name, "' must be a contiguous ", device, " ", dtype, " tensor of ",
              numel, " elements");
}

// The (count, kLoadJobWords) int64 jobs table of load_matrices and finish_grams.
inline void check_load_jobs(const at::Tensor& jobs, c10::DeviceType device) {
  TORCH_CHECK(jobs.dim() == 2 && jobs.size(1) == kLoadJobWords, "load_matrices: 'jobs' must be (count, ",
              kLoadJobWords, "), got ", jobs.sizes());
  check_batch_tensor(jobs, at::kLong, jobs.numel(), device, "jobs", "load_matrices");
}

inline void check_load_outputs(const at::Tensor& stats, const at::Tensor& flags, int64_t count,
                               c10::DeviceType device) {
  check_batch_tensor(stats, at::kDouble, kStatsRows * count, device, "stats", "load_matrices");
  check_batch_tensor(flags, at::kInt, kFlagRows * count, device, "flags", "load_matrices");
}

// The (count, kBasisJobWords) int64 jobs of load_bases, the call's (kFlagRows, n) int32 flags
// and its ok vector.
inline void check_basis_jobs(const at::Tensor& jobs, const at::Tensor& flags, const at::Tensor& ok,
                             c10::DeviceType device) {
  TORCH_CHECK(jobs.dim() == 2 && jobs.size(1) == kBasisJobWords, "load_bases: 'jobs' must be (count, ",
              kBasisJobWords, "), got ", jobs.sizes());
  check_batch_tensor(jobs, at::kLong, jobs.numel(), device, "jobs", "load_bases");
  TORCH_CHECK(flags.dim() == 2 && flags.size(0) == kFlagRows, "load_bases: 'flags' must be (",
              kFlagRows, ", n), got ", flags.sizes());
  check_batch_tensor(flags, at::kInt, flags.numel(), device, "flags", "load_bases");
  check_batch_tensor(ok, at::kBool, ok.numel(), device, "ok", "load_bases");
}

// The (count, kOutputJobWords) int64 jobs of write_outputs.
inline void check_output_jobs(const at::Tensor& jobs, c10::DeviceType device) {
  TORCH_CHECK(jobs.dim() == 2 && jobs.size(1) == kOutputJobWords, "write_outputs: 'jobs' must be (count, ",
              kOutputJobWords, "), got ", jobs.sizes());
  check_batch_tensor(jobs, at::kLong, jobs.numel(), device, "jobs", "write_outputs");
}

// The (B, b, b) Rayleigh-Ritz matrices and the (B) usable flags of symmetrize_ritz_matrices.
inline void check_ritz_matrices(const at::Tensor& h, const at::Tensor& usable, c10::DeviceType device) {
  TORCH_CHECK(h.dim() == 3 && h.size(1) == h.size(2), "symmetrize_ritz_matrices: 'h' must be (B, b, b), got ",
              h.sizes());
  check_batch_tensor(h, at::kDouble, h.numel(), device, "h", "symmetrize_ritz_matrices");
  check_batch_tensor(usable, at::kBool, h.size(0), device, "usable", "symmetrize_ritz_matrices");
}

// G U and U (B, k, b), theta (B, b), total (B), res2 (B, b) and rows (B, b + 1) of ritz_residuals.
inline void check_ritz_residuals(const at::Tensor& gu, const at::Tensor& u, const at::Tensor& theta,
                                 const at::Tensor& total, const at::Tensor& res2, const at::Tensor& rows,
                                 c10::DeviceType device) {
  TORCH_CHECK(gu.dim() == 3, "ritz_residuals: 'gu' must be (B, k, b), got ", gu.sizes());
  const int64_t batch = gu.size(0), k = gu.size(1), b = gu.size(2);
  const char* caller = "ritz_residuals";
  check_batch_tensor(gu, at::kDouble, batch * k * b, device, "gu", caller);
  check_batch_tensor(u, at::kDouble, batch * k * b, device, "u", caller);
  check_batch_tensor(theta, at::kDouble, batch * b, device, "theta", caller);
  check_batch_tensor(total, at::kDouble, batch, device, "total", caller);
  check_batch_tensor(res2, at::kDouble, batch * b, device, "res2", caller);
  check_batch_tensor(rows, at::kDouble, batch * (b + 1), device, "rows", caller);
}

// q, out (B, k, b) float64, ok (B) bool and, when defined, previous (as q) of cholesky_qr.
inline void check_cholesky_qr_args(const at::Tensor& q, const at::Tensor& previous,
                                   const at::Tensor& out, const at::Tensor& ok, c10::DeviceType device) {
  TORCH_CHECK(q.dim() == 3, "cholesky_qr: 'q' must be (B, k, b), got ", q.sizes());
  const int64_t batch = q.size(0), k = q.size(1), b = q.size(2);
  check_batch_tensor(q, at::kDouble, batch * k * b, device, "q", "cholesky_qr");
  check_batch_tensor(out, at::kDouble, batch * k * b, device, "out", "cholesky_qr");
  check_batch_tensor(ok, at::kBool, batch, device, "ok", "cholesky_qr");
  if (previous.defined()) {
    check_batch_tensor(previous, at::kDouble, batch * k * b, device, "previous", "cholesky_qr");
  }
}

inline void check_gram_norms(const at::Tensor& gram_fro2, int64_t count, c10::DeviceType device) {
  check_batch_tensor(gram_fro2, at::kDouble, count, device, "gram_fro2", "finish_grams");
}

}  // namespace trp_ext
