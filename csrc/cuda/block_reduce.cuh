// Block-wide reductions for kernels of kWarps full warps (blockDim.x == 32 * kWarps), every
// thread taking part: the result reaches every thread.
#pragma once

namespace trp_ext {
namespace cuda_util {

// Block-wide sum, max and AND of one value per thread; every thread gets the result. `scratch`
// holds one value per warp; the barrier first lets an earlier reduction finish reading it.
template <int kWarps>
__device__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

// block_max starts from 0 and fmax drops NaN: for non-negative values (magnitudes) only.
template <int kWarps>
__device__ double block_max(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double largest = 0.0;
  for (int w = 0; w < kWarps; ++w) largest = fmax(largest, scratch[w]);
  return largest;
}

template <int kWarps>
__device__ bool block_all(bool v, int* scratch) {
  const bool warp_all = __all_sync(0xffffffffu, v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = warp_all ? 1 : 0;
  __syncthreads();
  bool all = true;
  for (int w = 0; w < kWarps; ++w) all = all && scratch[w] != 0;
  return all;
}

}  // namespace cuda_util
}  // namespace trp_ext
