// A process-wide switch that chooses whether a kernel takes one of its optional paths (the CPU
// factored_conv2d's Winograd, channel-vectorised and split-image paths; the CUDA one's
// pipelined loads; the CUDA lowrank_project's batched cuSOLVER eigensolver; the CPU
// lowrank_project's run of the CUDA kernel's batched algorithm), set from Python for tests and
// A/B benches.
#pragma once

#include <atomic>

namespace trp_ext {

// kAuto: the path where its rule picks it; kNever: never; kAlways: every call it can take
// (tests, A/B benches). The values are the Python modes' order.
enum class PathMode : int { kAuto = 0, kNever = 1, kAlways = 2 };

class PathSwitch {
 public:
  void set(PathMode mode) { mode_.store(static_cast<int>(mode)); }
  PathMode get() const { return static_cast<PathMode>(mode_.load()); }

 private:
  std::atomic<int> mode_{static_cast<int>(PathMode::kAuto)};
};

// The CUDA factored_conv2d's multi-stage cp.async loads of its first GEMM (defined in
// trp_ext.cpp, so that CPU-only builds have it too; read by cuda/factored_conv2d.cu).
PathSwitch& cuda_pipeline_switch();
// The CUDA lowrank_project's use of cusolverDnXsyevBatched (defined in trp_ext.cpp; read by
// cuda/lowrank_project.cu).
PathSwitch& cuda_batched_eigh_switch();
// The CPU lowrank_project through the batched algorithm of the CUDA kernel on the twins of its
// kernels (lowrank_project_batched.h) instead of its own per-matrix solver: kAlways only (tests
// of the CUDA algorithm without a GPU); kAuto and kNever keep the own solver, which is faster on a
// CPU. Defined in trp_ext.cpp, read by cpu/lowrank_project.cpp.
PathSwitch& cpu_batched_projection_switch();

}  // namespace trp_ext
