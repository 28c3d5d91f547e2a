// CUDA kernel of energy_rank: one thread per row runs the CPU kernels' energy_rank_of_row
// (common/energy_rule.h), accumulating in double in index order with the product rounded before
// each sum. The rank is the first index whose cumulative energy reaches the target, which at a
// tie (energy = 1 above all) depends on every rounding on the way: a parallel scan, which adds
// in another order, gave other ranks than the reference, even ranks past the last nonzero value.
// The rows are spectra (at most a few thousand values), so the sequential pass stays short.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/energy_rank_checks.h"
#include "common/energy_rule.h"

namespace trp_ext {
namespace {

constexpr int kThreads = 128;

template <typename scalar_t>
__global__ void energy_rank_kernel(const scalar_t* __restrict__ s, int64_t rows, int64_t cols,
                                   double energy, int64_t* __restrict__ ranks) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  ranks[row] = energy_rank_of_row(s + row * cols, cols, energy);
}

}  // namespace

at::Tensor energy_rank_cuda(const at::Tensor& s, double energy) {
  check_energy_rank_args(s, energy);
  const c10::cuda::CUDAGuard device_guard(s.device());
  const at::Tensor values = s.contiguous();
  const int64_t rows = values.size(0);
  at::Tensor ranks = at::empty({rows}, s.options().dtype(at::kLong));
  if (rows == 0) return ranks;
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 2147483647LL, "energy_rank(): too many rows for one launch");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "energy_rank_cuda", [&] {
    energy_rank_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        values.const_data_ptr<scalar_t>(), rows, values.size(1), energy, ranks.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_on_nonfinite_rows(ranks);
  return ranks;
}

TORCH_LIBRARY_IMPL(trp_ext, CUDA, m) { m.impl("energy_rank", &energy_rank_cuda); }

}  // namespace trp_ext
