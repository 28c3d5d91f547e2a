// The fused factored_conv2d CUDA kernel: a back-to-back implicit GEMM whose intermediate never
// leaves shared memory.
//
// A tile is kBM output pixels (channel scheme: kBM consecutive pixels of the flattened
// (N, Ho, Wo); spatial scheme: a tile_h x tile_w tile of one image) and all n output channels;
// one block computes it, unless the GPU has too few tiles (below).
//   Stage 1: mid (m1p x RP) = im2col(x) (m1p x K1) * w1^T (K1 x RP), in passes of kBM rows and
//            chunks of kBK reduction indices: the block gathers the A chunk from x (zero
//            padding by bounds checks) and the B chunk from w1 into shared memory, and each warp
//            multiplies its 16 rows. 16-bit channels_last operands in runs of 16 bytes go
//            through a kStages-deep cp.async pipeline instead (stage1_pipelined), w1 stored
//            column-major as it is read. The result goes to shared memory, rounded to T as the
//            unfused composition rounds its intermediate.
//            Channel: mid row m is output pixel m. Spatial: mid rows are the tile's rows of
//            the kh x 1 conv over the columns the 1 x kw conv reads (the halo), zero outside
//            the image, which is the second conv's zero padding.
//   Stage 2: out (kBM x n) = A2 (kBM x kw2 * RP) * w2^T, kBN channels at a time, then bias,
//            ReLU and the store. Channel: A2 is mid itself. Spatial: for each kx, A2 is
//            gathered from mid's rows (th, tw * sw2 + kx * dw2).
// When there are too few tiles to fill the GPU:
//   - on sm_90, a thread-block cluster of k_split blocks shares each tile (blockIdx.x = tile *
//     k_split + rank in the cluster): block `rank` runs stage-1 chunks rank, rank + k_split, ...
//     into an fp32 partial intermediate, and after a cluster barrier each block sums rows
//     [rank * m1p / k_split, ...) of all the partials through distributed shared memory and
//     writes them, rounded to T, into every block's intermediate. A second barrier, and each
//     block runs its share of the stage-2 chunks. So a deep reduction (a 512-channel 3x3 layer:
//     144 chunks) is spread over the cluster's SMs instead of running in series on one;
//   - blockIdx.y splits the stage-2 channel chunks further (each y recomputes stage 1, which is
//     cheap next to an idle GPU).
#pragma once

#include <cooperative_groups.h>

#include "cuda/async_copy.cuh"
#include "cuda/factored_conv2d_layout.cuh"
#include "cuda/factored_conv2d_tile.cuh"

namespace trp_ext {
namespace fconv_cuda {

// Stage-1 reduction index k -> (input channel, dy, dx, offset in a w1 row), or channel -1 past
// K1 (the host keeps w1's offsets within 32 bits). Order (ci, ky, kx) follows w1's layout, so NCHW gathers run along pixels; order
// (ky, kx, ci) makes channels_last gathers run along channels.
__device__ __forceinline__ int4 decode_k(const FconvArgs& a, int k) {
  if (k >= a.K1) return make_int4(-1, 0, 0, 0);
  int ci, ky, kx;
  if (a.cl_in) {
    const int tap = k / a.C;
    ci = k - tap * a.C;
    ky = tap / a.kw1;
    kx = tap - ky * a.kw1;
  } else {
    ci = k / (a.kh * a.kw1);
    const int tap = k - ci * a.kh * a.kw1;
    ky = tap / a.kw1;
    kx = tap - ky * a.kw1;
  }
  const long long w_offset = ci * a.w1s[1] + ky * a.w1s[2] + kx * a.w1s[3];
  return make_int4(ci, ky * a.dh, kx * a.dw1, static_cast<int>(w_offset));
}

// Where stage-1 row `row` of this block reads x (see RowInfo).
template <bool kSpatial>
__device__ __forceinline__ RowInfo stage1_row(const FconvArgs& a, int row, int p0, int img,
                                              int oh0, int ow0) {
  RowInfo info{kInvalidRow, 0, 0};
  if (kSpatial) {
    if (row >= a.m1) return info;
    const int th = row / a.tile_wi;
    const int oh = oh0 + th;
    if (oh >= a.Ho) return info;
    info.y0 = oh * a.sh - a.ph;
    info.x0 = ow0 * a.sw2 - a.pw2 + (row - th * a.tile_wi);  // the intermediate's column
    info.base = img * a.xs[0];
  } else {
    const int p = p0 + row;
    if (p >= a.pixels) return info;
    const int hw = a.Ho * a.Wo;
    const int n = p / hw;
    const int oh = (p - n * hw) / a.Wo;
    const int ow = p - n * hw - oh * a.Wo;
    info.y0 = oh * a.sh - a.ph;
    info.x0 = ow * a.sw1 - a.pw1;
    info.base = n * a.xs[0];
  }
  return info;
}

// Where output pixel `row` of this block goes (offset without the channel), or -1.
template <bool kSpatial>
__device__ __forceinline__ long long output_offset(const FconvArgs& a, int row, int p0, int img,
                                                   int oh0, int ow0) {
  int n, oh, ow;
  if (kSpatial) {
    if (row >= a.tile_h * a.tile_w) return -1;
    n = img;
    oh = oh0 + row / a.tile_w;
    ow = ow0 + row % a.tile_w;
    if (oh >= a.Ho || ow >= a.Wo) return -1;
  } else {
    const int p = p0 + row;
    if (p >= a.pixels) return -1;
    const int hw = a.Ho * a.Wo;
    n = p / hw;
    oh = (p - n * hw) / a.Wo;
    ow = p - n * hw - oh * a.Wo;
  }
  return n * a.os[0] + oh * a.os[2] + ow * a.os[3];
}

// Stage 1's chunks rank, rank + split, ... of one pass, one at a time: every thread gathers its
// share of the chunk into shared memory, waits for the whole block's, and the warps multiply.
template <typename T, int RP, class Tile>
__device__ __forceinline__ void stage1_single(const FconvArgs& a, const T* x, const T* w1,
                                              const RowInfo* rows, int4* ktab, T* As, T* Bs,
                                              int rank, int split, int chunks, int warp_row,
                                              Tile& acc) {
  using L = Layout<T, RP>;
  const int tid = threadIdx.x;
  // Over chunk indices, not k0: k0 + split * kBK could pass INT_MAX for K1 near fits_int32's
  // limit (chunk indices stay far below it).
  for (int chunk = rank; chunk < chunks; chunk += split) {
    const int k0 = chunk * kBK;
    if (tid < kBK) ktab[tid] = decode_k(a, k0 + tid);
    __syncthreads();  // tables written; every warp done with the previous chunk's tiles
    // A chunk: kBM x kBK gathered from x. NCHW: consecutive threads take consecutive rows
    // (pixels); channels_last: consecutive reduction indices (channels), 16 bytes at a time
    // when the host found the channels aligned for it (a group of kVec reduction indices is
    // then kVec channels of one tap: c is a multiple of kVec).
    if (a.vec_in) {
      constexpr int kVec = 16 / static_cast<int>(sizeof(T));
      constexpr int kGroups = kBK / kVec;
      for (int e = tid; e < kBM * kGroups; e += kThreads) {
        const int m = e / kGroups;
        const int group = e - m * kGroups;
        const int4 kt = ktab[group * kVec];
        const RowInfo info = rows[m];
        const int y = info.y0 + kt.y;
        const int xc = info.x0 + kt.z;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (kt.x >= 0 && y >= 0 && y < a.H && xc >= 0 && xc < a.W) {
          v = *reinterpret_cast<const uint4*>(x + info.base + kt.x + y * a.xs[2] + xc * a.xs[3]);
        }
        *reinterpret_cast<uint4*>(As + m * L::ld_a + group * kVec) = v;
      }
    } else {
#pragma unroll 4
      for (int i = 0; i < kBM * kBK / kThreads; ++i) {
        const int e = tid + i * kThreads;
        const int m = a.cl_in ? e / kBK : e % kBM;
        const int kl = a.cl_in ? e % kBK : e / kBM;
        const int4 kt = ktab[kl];
        const RowInfo info = rows[m];
        const int y = info.y0 + kt.y;
        const int xc = info.x0 + kt.z;
        T v = from_float<T>(0.0f);
        if (kt.x >= 0 && y >= 0 && y < a.H && xc >= 0 && xc < a.W) {
          v = x[info.base + kt.x * a.xs[1] + y * a.xs[2] + xc * a.xs[3]];
        }
        As[m * L::ld_a + kl] = v;
      }
    }
    // B chunk: kBK x RP from w1, consecutive threads along the reduction index. Where the
    // host found each run of kVec reduction indices to be kVec aligned elements of a w1 row
    // (vec_w1), one 16-byte load takes the run: the scalar loads, 32 a thread for a chunk of
    // a rank-128 layer, were most of the loads that the H200's wide layers stalled on.
    if (a.vec_w1) {
      constexpr int kVec = 16 / static_cast<int>(sizeof(T));
      constexpr int kGroups = kBK / kVec;
      for (int e = tid; e < kGroups * RP; e += kThreads) {
        const int group = e % kGroups;
        const int j = e / kGroups;
        const int4 kt = ktab[group * kVec];  // a run lies wholly before K1 or wholly past it
        uint4 v = make_uint4(0, 0, 0, 0);
        if (kt.x >= 0 && j < a.r) v = *reinterpret_cast<const uint4*>(w1 + j * a.w1s[0] + kt.w);
        const T* values = reinterpret_cast<const T*>(&v);
#pragma unroll
        for (int i = 0; i < kVec; ++i) Bs[(group * kVec + i) * L::ld_b1 + j] = values[i];
      }
    } else {
#pragma unroll 4
      for (int i = 0; i < kBK * RP / kThreads; ++i) {
        const int e = tid + i * kThreads;
        const int kl = e % kBK;
        const int j = e / kBK;
        const int4 kt = ktab[kl];
        Bs[kl * L::ld_b1 + j] =
            kt.x >= 0 && j < a.r ? w1[j * a.w1s[0] + kt.w] : from_float<T>(0.0f);
      }
    }
    __syncthreads();
    acc.mma(As + warp_row * L::ld_a, L::ld_a, Bs, L::ld_b1, kBK);
  }
}

// Stage 1's pipelined loads (FconvArgs::pipelined): chunk k0's A (kBM x kBK gathered from x)
// and B (w1, stored column-major, RP x kBK) issued as cp.async copies of 16 bytes into one
// pipeline stage. Zeros where the gather falls in the padding, past K1 or past the rank.
// Relies on the host's conditions for pipelined (vec_in and vec_w1): x's channels have stride 1
// (so kt.x is the channel's offset) and every run is 16 aligned bytes of x and of a w1 row.
template <typename T, int RP>
__device__ __forceinline__ void issue_chunk(const FconvArgs& a, const T* x, const T* w1,
                                            const RowInfo* rows, int k0, T* As, T* Bt) {
  using L = Layout<T, RP>;
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kGroups = kBK / kVec;
  static_assert(kThreads % kGroups == 0, "each thread keeps one run of the chunk");
  constexpr int kStep = kThreads / kGroups;
  const int group = threadIdx.x % kGroups;
  // The thread's run of kVec reduction indices: kVec channels of one tap (c is a multiple of
  // kVec), so the run lies wholly before K1 or wholly past it.
  const int4 kt = decode_k(a, k0 + group * kVec);
  for (int m = threadIdx.x / kGroups; m < kBM; m += kStep) {
    const RowInfo info = rows[m];
    const int y = info.y0 + kt.y;
    const int xc = info.x0 + kt.z;
    const bool valid = kt.x >= 0 && y >= 0 && y < a.H && xc >= 0 && xc < a.W;
    const T* src = valid ? x + info.base + kt.x + y * a.xs[2] + xc * a.xs[3] : x;
    cuda_util::copy16_async(As + m * L::ld_a + group * kVec, src, valid);
  }
  for (int j = threadIdx.x / kGroups; j < RP; j += kStep) {
    const bool valid = kt.x >= 0 && j < a.r;
    const T* src = valid ? w1 + j * a.w1s[0] + kt.w : w1;
    cuda_util::copy16_async(Bt + j * L::ld_bt + group * kVec, src, valid);
  }
}

// Stage 1's chunks rank, rank + split, ... of one pass through a kStages-deep pipeline in the
// work area: while the warps multiply chunk i, the copies of chunks i + 1 and i + 2 are in
// flight. One barrier a chunk: it publishes chunk i's stage and frees chunk i - 1's, which the
// copies of chunk i + kStages - 1 then overwrite. Ends with every copy landed and every warp
// done with the stages.
template <typename T, int RP, class Tile>
__device__ __forceinline__ void stage1_pipelined(const FconvArgs& a, const T* x, const T* w1,
                                                 const RowInfo* rows, T* stages, int rank,
                                                 int split, int chunks, int warp_row, Tile& acc) {
  using L = Layout<T, RP>;
  static_assert(kStages >= 2, "a stage to multiply and one to load");
  const int mine = (chunks - rank + split - 1) / split;
  const auto stage = [&](int i) { return stages + (i % kStages) * L::stage_elems; };
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < mine) {
      issue_chunk<T, RP>(a, x, w1, rows, (rank + i * split) * kBK, stage(i), stage(i) + kBM * L::ld_a);
    }
    cuda_util::commit_copies();  // empty groups too: the waits count groups, not chunks
  }
  for (int i = 0; i < mine; ++i) {
    cuda_util::wait_copies<kStages - 2>();  // this thread's copies of chunk i have landed
    __syncthreads();  // so have everyone's; and every warp is done with chunk i - 1
    const int next = i + kStages - 1;
    if (next < mine) {
      issue_chunk<T, RP>(a, x, w1, rows, (rank + next * split) * kBK, stage(next),
                         stage(next) + kBM * L::ld_a);
    }
    cuda_util::commit_copies();
    const T* As = stage(i);
    acc.mma_bt(As + warp_row * L::ld_a, L::ld_a, As + kBM * L::ld_a, L::ld_bt, kBK);
  }
  cuda_util::wait_copies<0>();  // only empty groups remain, but leave none behind
  __syncthreads();
}

// kPipelined: stage 1 through stage1_pipelined (the host instantiates it only for 16-bit T and
// launches it only where FconvArgs::pipelined holds). Its own instantiation, so that the
// registers the pipeline needs do not cost the single-buffered kernel occupancy.
template <typename T, int RP, bool kSpatial, bool kPipelined>
__global__ void __launch_bounds__(kThreads) factored_conv2d_kernel(const FconvArgs a) {
  using L = Layout<T, RP>;
  using Tile1 = typename WarpTileFor<T, RP>::type;
  using Tile2 = typename WarpTileFor<T, kBN>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  T* mid = reinterpret_cast<T*>(smem);
  unsigned char* work = smem + L::mid_bytes(a.m1p);
  T* As = reinterpret_cast<T*>(work);  // stage 1
  T* Bs = As + kBM * L::ld_a;
  T* B2s = reinterpret_cast<T*>(work);  // stage 2, over stage 1's buffers
  T* A2s = B2s + L::b2_elems;           // spatial only
  unsigned char* tail = work + L::work_bytes(kSpatial, kPipelined);
  float* staging = reinterpret_cast<float*>(tail) + (threadIdx.x / 32) * 256;
  RowInfo* rows = reinterpret_cast<RowInfo*>(tail + L::staging_bytes);
  long long* out_offsets = reinterpret_cast<long long*>(rows + kBM);
  int4* ktab = reinterpret_cast<int4*>(out_offsets + kBM);
  float* partial = reinterpret_cast<float*>(tail + L::staging_bytes + L::table_bytes);

  const int tid = threadIdx.x;
  const int warp_row = (tid / 32) * 16;  // the warp's first row in a pass
  const T* x = static_cast<const T*>(a.x);
  const T* w1 = static_cast<const T*>(a.w1);
  const T* w2 = static_cast<const T*>(a.w2);
  const T* bias = static_cast<const T*>(a.bias);
  const T* residual = static_cast<const T*>(a.residual);
  T* out = static_cast<T*>(a.out);

  // Uniform across the block (and the cluster's barriers need every thread of every block):
  // no thread returns early anywhere in this kernel.
  const int split = a.k_split;
  const int rank = static_cast<int>(blockIdx.x) % split;  // = the block's rank in its cluster
  const int tile = static_cast<int>(blockIdx.x) / split;
  const int chunks = a.K1p / kBK;
  int p0 = 0, img = 0, oh0 = 0, ow0 = 0;
  if (kSpatial) {
    const int tw_index = tile % a.tiles_w;
    const int rest = tile / a.tiles_w;
    img = rest / a.tiles_h;
    oh0 = (rest % a.tiles_h) * a.tile_h;
    ow0 = tw_index * a.tile_w;
  } else {
    p0 = tile * kBM;
  }

  // ---- Stage 1: the intermediate, into shared memory.
  for (int pass = 0; pass * kBM < a.m1p; ++pass) {
    // Nobody reads `rows` after the previous pass's last chunk barrier (pipelined: its final
    // barrier), so it is free here.
    if (tid < kBM) rows[tid] = stage1_row<kSpatial>(a, pass * kBM + tid, p0, img, oh0, ow0);
    Tile1 acc;
    acc.zero();
    if constexpr (kPipelined && Tile1::kTensorCores) {
      __syncthreads();  // rows written
      stage1_pipelined<T, RP>(a, x, w1, rows, As, rank, split, chunks, warp_row, acc);
    } else {
      stage1_single<T, RP>(a, x, w1, rows, ktab, As, Bs, rank, split, chunks, warp_row, acc);
    }
    if (split == 1) {
      T* dst = mid + (pass * kBM + warp_row) * L::ld_mid;
      acc.for_each(staging, false, [&](int row, int col, float v) {
        dst[row * L::ld_mid + col] = from_float<T>(v);
      });
    } else {
      float* dst = partial + (pass * kBM + warp_row) * L::ld_partial;
      acc.for_each(staging, false, [&](int row, int col, float v) {
        dst[row * L::ld_partial + col] = v;
      });
    }
  }
  if (split > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The partials summed in fp32 (in rank order, the same in every block) and rounded to T
    // once, as an unsplit block rounds its accumulators.
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every block's partial complete (and every block of the cluster running)
    const int share = (a.m1p + split - 1) / split;
    const int row0 = rank * share;
    const int row1 = min(a.m1p, row0 + share);
    for (int e = tid; e < (row1 - row0) * RP; e += kThreads) {
      const int row = row0 + e / RP;
      const int col = e - (e / RP) * RP;
      float sum = 0.0f;
      for (int q = 0; q < split; ++q) {
        sum += cluster.map_shared_rank(partial, q)[row * L::ld_partial + col];
      }
      const T v = from_float<T>(sum);
      for (int q = 0; q < split; ++q) cluster.map_shared_rank(mid, q)[row * L::ld_mid + col] = v;
    }
    cluster.sync();  // every intermediate complete; no block touches another's memory after this
#else
    __trap();  // the host splits only kernels compiled for sm_90 or later (ptxVersion)
#endif
  }
  if (tid < kBM) out_offsets[tid] = output_offset<kSpatial>(a, tid, p0, img, oh0, ow0);

  // ---- Stage 2: out = A2 * w2^T + bias + residual, ReLU; kBN output channels at a time.
  const int kw2 = kSpatial ? a.kw2 : 1;
  for (int chunk = blockIdx.y * split + rank; chunk < a.n_chunks; chunk += a.n_split * split) {
    const int o0 = chunk * kBN;
    Tile2 acc;
    acc.zero();
    for (int kx = 0; kx < kw2; ++kx) {
      __syncthreads();  // mid and the tables complete; the previous users of B2s/A2s done
      // B: w2 (o, j, kx) for the kBN channels, consecutive threads along j; kVec of them a load
      // where j has stride 1 (vec_w2), the run that crosses r element by element. Tensor cores
      // take it column-major (kBN x RP, B2s[col * ld_b2t + j]), so that a run is one 16-byte
      // store; CUDA cores row-major (RP x kBN).
      if (a.vec_w2) {
        constexpr int kVec = 16 / static_cast<int>(sizeof(T));
        constexpr int kGroups = RP / kVec;
        for (int e = tid; e < kGroups * kBN; e += kThreads) {
          const int j0 = (e % kGroups) * kVec;
          const int col = e / kGroups;
          const int o = o0 + col;
          uint4 v = make_uint4(0, 0, 0, 0);
          T* values = reinterpret_cast<T*>(&v);
          if (o < a.n) {
            const T* src = w2 + o * a.w2s[0] + j0 + kx * a.w2s[3];
            if (j0 + kVec <= a.r) {
              v = *reinterpret_cast<const uint4*>(src);
            } else {
#pragma unroll
              for (int i = 0; i < kVec; ++i) {
                if (j0 + i < a.r) values[i] = src[i];
              }
            }
          }
          if constexpr (Tile2::kTensorCores) {
            *reinterpret_cast<uint4*>(B2s + col * L::ld_b2t + j0) = v;
          } else {
#pragma unroll
            for (int i = 0; i < kVec; ++i) B2s[(j0 + i) * L::ld_b2 + col] = values[i];
          }
        }
      } else {
#pragma unroll 4
        for (int i = 0; i < RP * kBN / kThreads; ++i) {
          const int e = tid + i * kThreads;
          const int j = e % RP;
          const int col = e / RP;
          const int o = o0 + col;
          const T v = j < a.r && o < a.n ? w2[o * a.w2s[0] + j * a.w2s[1] + kx * a.w2s[3]]
                                         : from_float<T>(0.0f);
          if constexpr (Tile2::kTensorCores) {
            B2s[col * L::ld_b2t + j] = v;
          } else {
            B2s[j * L::ld_b2 + col] = v;
          }
        }
      }
      if (kSpatial) {
        // A2 row p = mid row (th, tw * sw2 + kx * dw2), copied 16 bytes at a time.
        constexpr int kVecs = RP * static_cast<int>(sizeof(T)) / 16;
        for (int e = tid; e < kBM * kVecs; e += kThreads) {
          const int p = e / kVecs;
          const int q = e - p * kVecs;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (p < a.tile_h * a.tile_w) {
            const int th = p / a.tile_w;
            const int src = th * a.tile_wi + (p - th * a.tile_w) * a.sw2 + kx * a.dw2;
            v = reinterpret_cast<const uint4*>(mid + src * L::ld_mid)[q];
          }
          reinterpret_cast<uint4*>(A2s + p * L::ld_mid)[q] = v;
        }
      }
      __syncthreads();
      const T* A2 = kSpatial ? A2s : mid;
      if constexpr (Tile2::kTensorCores) {
        acc.mma_bt(A2 + warp_row * L::ld_mid, L::ld_mid, B2s, L::ld_b2t, RP);
      } else {
        acc.mma(A2 + warp_row * L::ld_mid, L::ld_mid, B2s, L::ld_b2, RP);
      }
    }
    acc.for_each(staging, !a.cl_out, [&](int row, int col, float v) {
      const long long offset = out_offsets[warp_row + row];
      const int o = o0 + col;
      if (offset < 0 || o >= a.n) return;
      if (bias != nullptr) v += to_float(bias[o * a.bs]);
      if (residual != nullptr) v += to_float(residual[offset + o * a.os[1]]);
      if (a.relu) v = v < 0.0f ? 0.0f : v;  // NaN stays NaN, as in torch.relu
      out[offset + o * a.os[1]] = from_float<T>(v);
    });
  }
}

}  // namespace fconv_cuda
}  // namespace trp_ext
