// CPU kernel of lowrank_project: every matrix of the list in one call, in parallel over matrices.
// Matrices differ in size by orders of magnitude (a ResNet's 16 x 144 and 512 x 4608 weights),
// so a static split of the list would leave one thread with all the big ones: threads instead
// take the next matrices, largest first, from a shared counter (a few at a time: see
// group_size).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <tuple>
#include <vector>

#include "common/lowrank_project_checks.h"
#include "common/lowrank_project_stats.h"
#include "common/path_switch.h"
#include "cpu/lowrank_project_batched_twins.h"
#include "cpu/lowrank_project_solver.h"
#include "cpu/partial_eigen.h"
#include "cpu/sequential_blas.h"
#include "cpu/tridiagonal_ql.h"

namespace trp_ext {
namespace {

// The largest matrix (in values) a worker groups with others: a group's members are all loaded
// (as float64, with their Gram matrices) at once, and the QL sweeps a group interleaves are a
// small part of a large matrix's solve (its Gram and reduction grow as k^2 len and k^3, the
// sweeps as k^2). 2^20 values: 8 MiB a copy; a ResNet-50 512 x 4608 weight goes alone.
constexpr int64_t kMaxGroupedValues = int64_t{1} << 20;

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
lowrank_project_cpu(at::TensorList mats, double energy, std::optional<double> value_threshold,
                    std::optional<int64_t> max_rank, std::optional<at::TensorList> bases,
                    bool want_subgradient) {
  if (cpu_batched_projection_switch().get() == PathMode::kAlways) {
    return lowrank_project_batched(mats, energy, value_threshold, max_rank, bases, want_subgradient,
                                   cpu::batched_twin_kernels());
  }
  check_lowrank_project_args(mats, energy, value_threshold, max_rank, bases);
  const int64_t count = static_cast<int64_t>(mats.size());
  cpu::ProjectOptions options;
  options.energy = energy;
  options.value_threshold = value_threshold.value_or(-1.0);
  options.max_rank = max_rank.value_or(-1);
  options.want_subgradient = want_subgradient;

  // Largest Gram first (cost ~ k^2 len), so that the schedule ends on small matrices.
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  auto cost = [&](int64_t i) {
    const double k = static_cast<double>(lowrank_side(mats[i]));
    return k * k * static_cast<double>(std::max(mats[i].size(0), mats[i].size(1)));
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return cost(x) > cost(y); });

  std::vector<cpu::MatrixResult> results(count);
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  // How many matrices from position t of the schedule a worker takes at once: up to kQlGroup
  // that solve cold, whose eigenvalue iterations then interleave (project_matrices), but fewer
  // toward the end of the list, so that no worker is left with a group while the others idle.
  // A matrix that tries a warm start, that LAPACK solves (no QL to interleave), or whose float64
  // copy is large (a group holds all of its members' at once) goes alone.
  auto groups_with_others = [&](int64_t i) {
    const at::Tensor* basis = bases.has_value() ? &(*bases)[i] : nullptr;
    return !cpu::tries_warm_start(mats[i], basis, options) &&
           lowrank_side(mats[i]) < cpu::SymmetricEigen::kLapackFromSize &&
           mats[i].numel() <= kMaxGroupedValues;
  };
  auto group_size = [&](int64_t t) {
    const int64_t most = std::clamp<int64_t>((count - t) / (2 * workers), 1, cpu::kQlGroup);
    int64_t size = 0;
    while (size < most && groups_with_others(order[t + size])) ++size;
    return std::max<int64_t>(size, 1);
  };
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const cpu::SequentialBlasScope sequential_blas;  // the solver calls LAPACK and BLAS
    cpu::MatrixTask tasks[cpu::kQlGroup];
    cpu::MatrixResult group_results[cpu::kQlGroup];
    int64_t t = next.load();
    while (t < count) {
      const int64_t size = group_size(t);
      if (!next.compare_exchange_weak(t, t + size)) continue;  // t now holds the new position
      for (int64_t j = 0; j < size; ++j) {
        const int64_t i = order[t + j];
        tasks[j] = {&mats[i], bases.has_value() ? &(*bases)[i] : nullptr, static_cast<uint64_t>(i)};
      }
      cpu::project_matrices(tasks, size, options, group_results);
      for (int64_t j = 0; j < size; ++j) results[order[t + j]] = std::move(group_results[j]);
      t = next.load();
    }
  });

  for (int64_t i = 0; i < count; ++i) {
    if (results[i].nonfinite_matrix) raise_nonfinite("mats", i);
  }
  for (int64_t i = 0; i < count; ++i) {
    if (results[i].nonfinite_basis) raise_nonfinite("bases", i);
  }

  std::vector<at::Tensor> projected(count), subgradients, new_bases(count);
  at::Tensor ranks = at::empty({count}, mats[0].options().dtype(at::kLong));
  int64_t* rank_out = ranks.data_ptr<int64_t>();
  if (want_subgradient) subgradients.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    projected[i] = std::move(results[i].projected);
    new_bases[i] = std::move(results[i].basis);
    if (want_subgradient) subgradients[i] = std::move(results[i].subgradient);
    rank_out[i] = results[i].rank;
    count_project_path(results[i].path, results[i].warm_iterations);
  }
  return {projected, ranks, subgradients, new_bases};
}

TORCH_LIBRARY_IMPL(trp_ext, CPU, m) { m.impl("lowrank_project", &lowrank_project_cpu); }

}  // namespace trp_ext
