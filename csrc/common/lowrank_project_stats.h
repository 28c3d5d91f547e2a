// Process-wide counters of how lowrank_project solved each matrix, shared by the CPU and CUDA
// kernels and read through the lowrank_project_stats op. They let TRP (and the benches) report
// how often a warm start held, had to widen its basis, or fell back to a cold solve.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace trp_ext {

enum class ProjectPath : int {
  kCold = 0,      // no basis given (or an empty one): full solve
  kWarm = 1,      // the warm basis, refined by subspace iteration, was certified as it was
  kWidened = 2,   // certified only after the basis was widened
  kFallback = 3,  // the warm start could not be certified: full solve
};
// Counter slots: the four paths, then the total of subspace iterations of all warm starts.
constexpr int kWarmIterationsSlot = 4;
constexpr int kNumProjectCounters = 5;

// One instance per process: an inline function's static is unique across translation units.
inline std::array<std::atomic<int64_t>, kNumProjectCounters>& lowrank_project_counters() {
  static std::array<std::atomic<int64_t>, kNumProjectCounters> counters{};
  return counters;
}

inline void count_project_path(ProjectPath path, int64_t warm_iterations) {
  auto& counters = lowrank_project_counters();
  counters[static_cast<int>(path)].fetch_add(1, std::memory_order_relaxed);
  counters[kWarmIterationsSlot].fetch_add(warm_iterations, std::memory_order_relaxed);
}

inline std::vector<int64_t> read_project_counters(bool reset) {
  std::vector<int64_t> values(kNumProjectCounters);
  for (int i = 0; i < kNumProjectCounters; ++i) {
    auto& counter = lowrank_project_counters()[i];
    values[i] = reset ? counter.exchange(0, std::memory_order_relaxed)
                      : counter.load(std::memory_order_relaxed);
  }
  return values;
}

}  // namespace trp_ext
