// CUDA kernel of energy_rank: one block per row. Threads own contiguous chunks, a block scan
// of the chunk sums gives each chunk its prefix, and the first index whose cumulative energy
// reaches the target wins (atomicMin). Accumulation is in double, as on the CPU.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/energy_rank_checks.h"

namespace trp_ext {
namespace {

constexpr int kThreads = 128;

// Inclusive block scan (Hillis-Steele); every thread of the block must call it.
__device__ double block_inclusive_scan(double value, double* shared) {
  const int tid = threadIdx.x;
  shared[tid] = value;
  __syncthreads();
  for (int offset = 1; offset < kThreads; offset <<= 1) {
    const double add = tid >= offset ? shared[tid - offset] : 0.0;
    __syncthreads();
    shared[tid] += add;
    __syncthreads();
  }
  const double result = shared[tid];
  __syncthreads();
  return result;
}

template <typename scalar_t>
__global__ void energy_rank_kernel(const scalar_t* __restrict__ s, int64_t cols, double energy,
                                   int64_t* __restrict__ ranks) {
  __shared__ double scan[kThreads];
  __shared__ double total;
  __shared__ long long first_hit;
  __shared__ long long last_nonzero;
  __shared__ int nonfinite;

  const scalar_t* row = s + static_cast<int64_t>(blockIdx.x) * cols;
  const int64_t chunk = (cols + kThreads - 1) / kThreads;
  const int64_t begin = min(cols, chunk * threadIdx.x);
  const int64_t end = min(cols, begin + chunk);
  if (threadIdx.x == 0) {
    first_hit = cols;
    last_nonzero = -1;
    nonfinite = 0;
  }
  __syncthreads();

  double local = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    const double v = static_cast<double>(row[i]);
    if (!isfinite(v)) nonfinite = 1;
    if (v != 0.0) atomicMax(&last_nonzero, static_cast<long long>(i));
    local = __fma_rn(v, v, local);
  }
  const double prefix = block_inclusive_scan(local, scan) - local;
  if (begin < end && end == cols) {
    // The owner of the last element sets the total by the same arithmetic the search below
    // repeats, so the last cumulative value equals the total bit for bit.
    double cumulative = prefix;
    for (int64_t i = begin; i < end; ++i) {
      const double v = static_cast<double>(row[i]);
      cumulative = __fma_rn(v, v, cumulative);
    }
    total = cumulative;
  }
  if (cols == 0 && threadIdx.x == 0) total = 0.0;
  __syncthreads();

  if (nonfinite) {
    if (threadIdx.x == 0) ranks[blockIdx.x] = -1;
    return;
  }
  if (total == 0.0) {
    if (threadIdx.x == 0) ranks[blockIdx.x] = 0;
    return;
  }
  const double target = energy * total;
  double cumulative = prefix;
  for (int64_t i = begin; i < end; ++i) {
    const double v = static_cast<double>(row[i]);
    cumulative = __fma_rn(v, v, cumulative);
    if (cumulative >= target) {
      atomicMin(&first_hit, static_cast<long long>(i));
      break;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    ranks[blockIdx.x] = first_hit < cols ? first_hit + 1 : last_nonzero + 1;
  }
}

}  // namespace

at::Tensor energy_rank_cuda(const at::Tensor& s, double energy) {
  check_energy_rank_args(s, energy);
  const c10::cuda::CUDAGuard device_guard(s.device());
  const at::Tensor values = s.contiguous();
  const int64_t rows = values.size(0);
  at::Tensor ranks = at::empty({rows}, s.options().dtype(at::kLong));
  if (rows == 0) return ranks;
  TORCH_CHECK(rows <= 2147483647LL, "energy_rank(): too many rows for one launch");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "energy_rank_cuda", [&] {
    energy_rank_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        values.const_data_ptr<scalar_t>(), values.size(1), energy, ranks.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_on_nonfinite_rows(ranks);
  return ranks;
}

TORCH_LIBRARY_IMPL(trp_ext, CUDA, m) { m.impl("energy_rank", &energy_rank_cuda); }

}  // namespace trp_ext
