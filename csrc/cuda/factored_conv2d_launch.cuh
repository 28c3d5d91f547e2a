// Host side of the fused factored_conv2d CUDA kernel's launch: the tile and cluster choices and
// the launch itself, per dtype and compiled rank. launch_for_rank<T> is instantiated in one
// translation unit per dtype (factored_conv2d_{half,bfloat16,float}.cu), so that a build compiles
// the kernels' many instantiations in parallel rather than in one long nvcc run.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cuda/dynamic_smem.cuh"
#include "cuda/factored_conv2d_kernel.cuh"

namespace trp_ext {
namespace fconv_launch {

using fconv_cuda::FconvArgs;
using fconv_cuda::kBK;
using fconv_cuda::kBM;
using fconv_cuda::kBN;
using fconv_cuda::kMaxMidRows;
using fconv_cuda::Layout;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The rank rounded up to a compiled tile width, or 0 past kMaxRank.
inline int tile_rank(int64_t r) {
  for (int rp : {16, 32, 64, 128}) {
    if (r <= rp) return rp;
  }
  return 0;
}

// The most blocks a cluster may hold without opting in to non-portable sizes.
constexpr int kMaxClusterBlocks = 8;

// Whether `kernel` may split its tiles over clusters on this device: sm_90 or later, and a
// binary compiled for it (ptxVersion: a kernel JIT-compiled from older PTX has no cluster code).
bool clusters_supported(const void* kernel, const cudaDeviceProp& props);
// A launch of `grid` blocks of kThreads in clusters of `split` blocks along x. The config points
// at `attribute`, which must outlive it.
cudaLaunchConfig_t cluster_config(dim3 grid, int split, size_t smem, cudaStream_t stream,
                                  cudaLaunchAttribute* attribute);
// Whether clusters of `split` blocks of `kernel`, each with `smem` bytes of shared memory, fit
// on one of the device's GPU processing clusters (a launch that cannot place one fails). Asked
// of the driver once per kernel, device, size and shared memory.
bool cluster_fits(const void* kernel, int split, size_t smem, cudaStream_t stream);

// Spatial scheme: the output tile (at most kBM pixels) that minimises the tensor-core work,
// counting the halo of the intermediate (stage 1) and the padding of both GEMMs. Returns false
// when no tile fits the shared memory.
template <typename T, int RP>
bool choose_spatial_tile(FconvArgs& a, size_t smem_limit) {
  double best = std::numeric_limits<double>::infinity();
  for (int tw = 1; tw <= std::min(a.Wo, kBM); ++tw) {
    for (int th = std::min(a.Ho, kBM / tw); th >= 1; --th) {
      // In 64 bits, and bounded before the narrowing: with a stride or dilation near 2^31 the
      // halo'd width, or its product with th, would wrap in an int and pass the size checks.
      const int64_t wi = static_cast<int64_t>(tw - 1) * a.sw2 + static_cast<int64_t>(a.kw2 - 1) * a.dw2 + 1;
      const int64_t rows = ceil_div(th * wi, kBM) * kBM;
      if (rows > kMaxMidRows) continue;
      const int m1p = static_cast<int>(rows);
      if (Layout<T, RP>::bytes(m1p, true, false, a.pipelined) > smem_limit) continue;
      const double blocks = static_cast<double>(a.N) * ceil_div(a.Ho, th) * ceil_div(a.Wo, tw);
      const double cost = blocks * (static_cast<double>(m1p) * a.K1p * RP +
                                    static_cast<double>(kBM) * a.kw2 * RP * a.n_chunks * kBN);
      if (cost < best) {
        best = cost;
        a.tile_h = th;
        a.tile_w = tw;
        a.tile_wi = static_cast<int>(wi);
        a.m1 = static_cast<int>(th * wi);
        a.m1p = m1p;
      }
      break;  // the tallest tile that fits is the cheapest for this width
    }
  }
  if (best == std::numeric_limits<double>::infinity()) return false;
  a.tiles_h = static_cast<int>(ceil_div(a.Ho, a.tile_h));
  a.tiles_w = static_cast<int>(ceil_div(a.Wo, a.tile_w));
  return true;
}

// The kernel instantiation for the scheme, and for pipelined loads (16-bit types only: float32
// never takes them, so it has no such instantiation).
template <typename T, int RP>
void (*kernel_for(bool spatial, bool pipelined))(FconvArgs) {
  using fconv_cuda::factored_conv2d_kernel;
  if constexpr (!std::is_same_v<T, float>) {
    if (pipelined) {
      return spatial ? factored_conv2d_kernel<T, RP, true, true> : factored_conv2d_kernel<T, RP, false, true>;
    }
  }
  return spatial ? factored_conv2d_kernel<T, RP, true, false> : factored_conv2d_kernel<T, RP, false, false>;
}

template <typename T, int RP>
bool launch(FconvArgs a, bool spatial, const cudaDeviceProp& props, cudaStream_t stream) {
  using L = Layout<T, RP>;
  const size_t smem_limit = props.sharedMemPerBlockOptin;
  int64_t blocks;
  if (spatial) {
    if (!choose_spatial_tile<T, RP>(a, smem_limit)) return false;
    blocks = static_cast<int64_t>(a.N) * a.tiles_h * a.tiles_w;
  } else {
    a.m1p = kBM;
    blocks = ceil_div(a.pixels, kBM);
  }
  size_t smem = L::bytes(a.m1p, spatial, false, a.pipelined);
  if (smem > smem_limit || blocks > std::numeric_limits<int>::max()) return false;
  auto kernel = kernel_for<T, RP>(spatial, a.pipelined);
  const void* kernel_id = reinterpret_cast<const void*>(kernel);
  // Too few tiles to fill the GPU: first spread each tile's stage-1 reduction over a cluster
  // (a power of two of blocks, each keeping at least two chunks), then split the output
  // channels over blockIdx.y.
  const int64_t want = 2 * static_cast<int64_t>(props.multiProcessorCount);
  const int64_t chunks = a.K1p / kBK;
  const size_t split_smem = L::bytes(a.m1p, spatial, true, a.pipelined);
  a.k_split = 1;
  if (blocks < want && chunks >= 4 && split_smem <= smem_limit &&
      clusters_supported(kernel_id, props)) {
    int split = 1;
    while (split < kMaxClusterBlocks && blocks * split * 2 <= want && chunks >= 4 * split) {
      split *= 2;
    }
    if (split > 1) cuda_util::allow_dynamic_smem(kernel_id, split_smem);
    while (split > 1 && !cluster_fits(kernel_id, split, split_smem, stream)) split /= 2;
    if (split > 1 && blocks * split <= std::numeric_limits<int>::max()) {
      a.k_split = split;
      smem = split_smem;
    }
  }
  const int64_t tiles_blocks = blocks * a.k_split;
  a.n_split = static_cast<int>(std::clamp<int64_t>(ceil_div(want, tiles_blocks), 1,
                                                   ceil_div(a.n_chunks, a.k_split)));
  const dim3 grid(static_cast<unsigned>(tiles_blocks), static_cast<unsigned>(a.n_split));
  cuda_util::allow_dynamic_smem(kernel_id, smem);
  if (a.k_split == 1) {
    kernel<<<grid, fconv_cuda::kThreads, smem, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = cluster_config(grid, a.k_split, smem, stream, &attribute);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a));
  return true;
}

template <typename T>
bool launch_for_rank(const FconvArgs& a, bool spatial, const cudaDeviceProp& props,
                     cudaStream_t stream) {
  switch (tile_rank(a.r)) {
    case 16: return launch<T, 16>(a, spatial, props, stream);
    case 32: return launch<T, 32>(a, spatial, props, stream);
    case 64: return launch<T, 64>(a, spatial, props, stream);
    case 128: return launch<T, 128>(a, spatial, props, stream);
    default: return false;
  }
}


extern template bool launch_for_rank<__half>(const FconvArgs&, bool, const cudaDeviceProp&, cudaStream_t);
extern template bool launch_for_rank<__nv_bfloat16>(const FconvArgs&, bool, const cudaDeviceProp&,
                                                    cudaStream_t);
extern template bool launch_for_rank<float>(const FconvArgs&, bool, const cudaDeviceProp&, cudaStream_t);

}  // namespace fconv_launch
}  // namespace trp_ext
