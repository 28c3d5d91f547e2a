// CPU kernel of energy_rank: rows in parallel, each accumulated sequentially in double.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/energy_rank_checks.h"
#include "common/energy_rule.h"

namespace trp_ext {

at::Tensor energy_rank_cpu(const at::Tensor& s, double energy) {
  check_energy_rank_args(s, energy);
  const at::Tensor values = s.contiguous();
  const int64_t rows = values.size(0);
  const int64_t cols = values.size(1);
  at::Tensor ranks = at::empty({rows}, s.options().dtype(at::kLong));
  int64_t* out = ranks.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "energy_rank_cpu", [&] {
    const scalar_t* in = values.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        out[row] = energy_rank_of_row(in + row * cols, cols, energy);
      }
    });
  });
  raise_on_nonfinite_rows(ranks);
  return ranks;
}

TORCH_LIBRARY_IMPL(trp_ext, CPU, m) { m.impl("energy_rank", &energy_rank_cpu); }

}  // namespace trp_ext
