// lowrank_project_stats: reads (and optionally resets) the process-wide counters of how
// lowrank_project solved its matrices, on any device (common/lowrank_project_stats.h). It takes
// no tensors, so it registers as CompositeExplicitAutograd, which the dispatcher uses for every
// key, the tensor-less call included.
#include <torch/library.h>

#include "common/lowrank_project_stats.h"

namespace trp_ext {

std::vector<int64_t> lowrank_project_stats(bool reset) { return read_project_counters(reset); }

TORCH_LIBRARY_IMPL(trp_ext, CompositeExplicitAutograd, m) {
  m.impl("lowrank_project_stats", &lowrank_project_stats);
}

}  // namespace trp_ext
