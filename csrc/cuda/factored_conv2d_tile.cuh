// One warp's share of a GEMM in the fused factored_conv2d kernel: a 16 x NC tile of fp32
// accumulators, C += A (16 x K) * B (K x NC), with A row-major in shared memory and B row-major
// (mma) or, on tensor cores, column-major (mma_bt: B stored as NC rows of K, as the weights
// hold it, so that it loads in 16-byte runs).
//   WmmaWarpTile: tensor cores (WMMA 16x16x16), for float16 and bfloat16 inputs.
//   SimtWarpTile: CUDA-core FMAs, for float32 (and 16-bit types on GPUs without the matching
//                 tensor cores): lane l owns row l % 16 and half of the columns.
// for_each(f) hands every accumulator to f(row, col, value), so that the caller decides where it
// goes (the intermediate in shared memory, or the output with the epilogue).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

namespace trp_ext {
namespace fconv_cuda {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int NC>
struct WmmaWarpTile {
  static_assert(NC % 16 == 0, "whole 16x16 fragments");
  static constexpr bool kTensorCores = true;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[NC / 16];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int j = 0; j < NC / 16; ++j) nvcuda::wmma::fill_fragment(acc[j], 0.0f);
  }

  // K a multiple of 16; A, B and the leading dimensions as WMMA wants them (32-byte aligned
  // fragments, lda and ldb multiples of 8), which Layout guarantees.
  __device__ __forceinline__ void mma(const T* A, int lda, const T* B, int ldb, int K) {
    multiply<nvcuda::wmma::row_major>(A, lda, B, ldb, K);
  }

  // B column-major: element (k, c) at Bt[c * ldbt + k]; the same alignment rules.
  __device__ __forceinline__ void mma_bt(const T* A, int lda, const T* Bt, int ldbt, int K) {
    multiply<nvcuda::wmma::col_major>(A, lda, Bt, ldbt, K);
  }

  template <class BLayout>
  __device__ __forceinline__ void multiply(const T* A, int lda, const T* B, int ldb, int K) {
    using namespace nvcuda;
    constexpr bool kColMajor = std::is_same_v<BLayout, wmma::col_major>;
    for (int kk = 0; kk < K; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, A + kk, lda);
#pragma unroll
      for (int j = 0; j < NC / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b;
        wmma::load_matrix_sync(b, kColMajor ? B + 16 * j * ldb + kk : B + kk * ldb + 16 * j, ldb);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
  }

  // The fragment layout is opaque, so each fragment goes through the warp's 16 x 16 fp32
  // staging area. rows_fastest: consecutive lanes take consecutive rows (pixels), which
  // coalesces NCHW stores; else consecutive columns (channels).
  template <class F>
  __device__ __forceinline__ void for_each(float* staging, bool rows_fastest, F&& f) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < NC / 16; ++j) {
      nvcuda::wmma::store_matrix_sync(staging, acc[j], 16, nvcuda::wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = lane; e < 256; e += 32) {
        const int row = rows_fastest ? e % 16 : e / 16;
        const int col = rows_fastest ? e / 16 : e % 16;
        f(row, 16 * j + col, staging[row * 16 + col]);
      }
      __syncwarp();  // staging is reused by the next fragment
    }
  }
};

template <typename T, int NC>
struct SimtWarpTile {
  static_assert(NC % 16 == 0, "two lanes per row, four columns per vector load");
  static constexpr bool kTensorCores = false;
  static constexpr int kCols = NC / 2;  // per lane
  float acc[kCols];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[c] = 0.0f;
  }

  __device__ __forceinline__ void mma(const T* A, int lda, const T* B, int ldb, int K) {
    const int lane = threadIdx.x & 31;
    const T* a_row = A + (lane & 15) * lda;
    const T* b_cols = B + (lane >> 4) * kCols;
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const float a = to_float(a_row[k]);
      const T* b = b_cols + k * ldb;
      if constexpr (std::is_same_v<T, float>) {
        // ldb and kCols are multiples of 4 and rows 16-byte aligned (Layout): float4 loads,
        // the same address across each half-warp (a broadcast).
#pragma unroll
        for (int c = 0; c < kCols; c += 4) {
          const float4 v = *reinterpret_cast<const float4*>(b + c);
          acc[c] += a * v.x;
          acc[c + 1] += a * v.y;
          acc[c + 2] += a * v.z;
          acc[c + 3] += a * v.w;
        }
      } else {
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[c] += a * to_float(b[c]);
      }
    }
  }

  template <class F>
  __device__ __forceinline__ void for_each(float* /*staging*/, bool /*rows_fastest*/, F&& f) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < kCols; ++c) f(lane & 15, (lane >> 4) * kCols + c, acc[c]);
  }
};

// Tensor cores where the GPU has them for T (fp16: sm_70, bf16: sm_80), CUDA cores otherwise.
template <typename T, int NC>
struct WarpTileFor {
  using type = WmmaWarpTile<T, NC>;
};
template <int NC>
struct WarpTileFor<float, NC> {
  using type = SimtWarpTile<float, NC>;
};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <int NC>
struct WarpTileFor<__nv_bfloat16, NC> {
  using type = SimtWarpTile<__nv_bfloat16, NC>;
};
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
template <int NC>
struct WarpTileFor<__half, NC> {
  using type = SimtWarpTile<__half, NC>;
};
#endif

}  // namespace fconv_cuda
}  // namespace trp_ext
