// Host-side checks of the tensors the batched lowrank_project passes to its own kernels (CUDA
// launchers and CPU twins alike): a mistake there is a bug of the caller, reported by name.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/batched_load.h"

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

inline void check_gram_norms(const at::Tensor& gram_fro2, int64_t count, c10::DeviceType device) {
  check_batch_tensor(gram_fro2, at::kDouble, count, device, "gram_fro2", "finish_grams");
}

}  // namespace trp_ext
