// Launch arguments and shared-memory layout of the fused factored_conv2d CUDA kernel, shared by
// the kernel (factored_conv2d_kernel.cuh) and the host code that sizes and launches it
// (factored_conv2d.cu).
#pragma once

#include <cstddef>
#include <cstdint>

namespace trp_ext {
namespace fconv_cuda {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // rows of one GEMM pass: 16 per warp
constexpr int kBK = 32;           // stage-1 reduction chunk
constexpr int kBN = 64;           // stage-2 output channels per chunk
constexpr int kMaxRank = 128;     // larger ranks take the unfused fallback
constexpr int kMaxMidRows = 4 * kBM;  // spatial tiles: at most 4 stage-1 passes
// Stage-1 chunks in flight per block on the pipelined path (FconvArgs::pipelined): one being
// multiplied while the next two load.
constexpr int kStages = 3;

// Everything the kernel needs; plain values, passed by value.
struct FconvArgs {
  const void* x;
  const void* w1;    // (r, c, kh, kw1)
  const void* w2;    // (n, r, 1, kw2)
  const void* bias;  // (n,) or null
  const void* residual;  // null, or the output's shape and strides (read at the output's offsets)
  void* out;
  long long xs[4];  // strides, in elements (the weights' any layout, e.g. channels_last)
  long long os[4];
  long long w1s[4], w2s[4], bs;
  int N, C, H, W, r, n, Ho, Wo;
  // First conv (over x). Spatial scheme: kw1 = 1, sw1 = 1, pw1 = 0, dw1 = 1.
  int kh, kw1, sh, sw1, ph, pw1, dh, dw1;
  // Second conv's width parts. Channel scheme: kw2 = 1, sw2 = 1, pw2 = 0, dw2 = 1.
  int kw2, sw2, pw2, dw2;
  int K1, K1p;  // stage-1 reduction length c * kh * kw1, and rounded up to kBK
  // Tiles. Channel: kBM consecutive output pixels of the flattened (N, Ho, Wo); m1p = kBM.
  // Spatial: tile_h x tile_w output pixels of one image, whose intermediate is tile_h rows of
  // tile_wi = (tile_w - 1) * sw2 + (kw2 - 1) * dw2 + 1 columns (the halo), m1 rows in all,
  // m1p rounded up to kBM.
  int tile_h, tile_w, tile_wi, m1, m1p, tiles_h, tiles_w;
  int pixels;             // N * Ho * Wo
  int n_chunks, n_split;  // stage-2 chunks of kBN channels; blocks along y sharing them
  // Blocks of a thread-block cluster (sm_90) that share one tile: each runs every k_split-th
  // stage-1 chunk, the cluster sums the fp32 partial intermediates through distributed shared
  // memory, and the blocks then share the stage-2 chunks. 1: no cluster.
  int k_split;
  bool relu;
  bool cl_in;   // x has channels stride 1: gather along channels (coalesced for channels_last)
  bool cl_out;  // out has channels stride 1: write channel-fastest
  bool vec_in;  // cl_in, and 16-byte aligned runs of 16 / sizeof(T) channels: vector gathers
  // 16-byte weight loads (see make_args): w1 holds every run of 16 / sizeof(T) reduction indices
  // of a stage-1 chunk as that many consecutive, aligned elements of each row; w2 holds the
  // rank index j with stride 1, its rows and kx steps aligned.
  bool vec_w1;
  bool vec_w2;
  // Stage 1 loads its chunks with cp.async, kStages deep, straight into shared memory (w1
  // stored as RP x kBK, a column-major B): vec_in and vec_w1, a tensor-core dtype on sm_80 or
  // later, and the cuda_pipelined_loads switch not 'never'. The host sizes shared memory by it
  // and launches the kernel instantiated with kPipelined equal to it.
  bool pipelined;
};

// Where a stage-1 row reads: x rows y0 + dy, columns x0 + dx of image `base`. Rows past the
// tile get y0 = kInvalidRow, which every bounds check rejects.
struct RowInfo {
  int y0;
  int x0;
  long long base;
};
constexpr int kInvalidRow = -(1 << 29);

__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }
__host__ __device__ constexpr size_t larger(size_t a, size_t b) { return a > b ? a : b; }

// Shared memory, in this order:
//   mid       m1p x ld_mid            the intermediate, in T (never leaves shared memory)
//   work      stage 1: A (kBM x ld_a) and B (kBK x ld_b1); pipelined: kStages pairs of
//                      A (kBM x ld_a) and B stored column-major (RP x ld_bt)
//             stage 2: B (RP x ld_b2, or on tensor cores column-major, kBN x ld_b2t) and,
//                      spatial, the gathered A (kBM x ld_mid)
//   staging   kWarps x 16 x 16 floats (accumulator fragments on their way out)
//   tables    kBM RowInfo, kBM output offsets, kBK reduction-index entries (int4)
//   partial   m1p x ld_partial fp32   split stage 1 only (k_split > 1): this block's share of
//                                     the intermediate, before the cluster sums it
// Rows are padded by 16 bytes: WMMA needs 32-byte aligned fragments (16-row steps keep that)
// and the padding spreads rows over the banks.
template <typename T, int RP>
struct Layout {
  static constexpr int kPad = 16 / sizeof(T);
  static constexpr int ld_a = kBK + kPad;
  static constexpr int ld_b1 = RP + kPad;
  static constexpr int ld_mid = RP + kPad;
  static constexpr int ld_b2 = kBN + kPad;
  static constexpr int ld_bt = kBK + kPad;
  static constexpr int ld_b2t = RP + kPad;
  // One pipeline stage of stage 1: A and B (column-major), in elements.
  static constexpr size_t stage_elems = static_cast<size_t>(kBM) * ld_a + static_cast<size_t>(RP) * ld_bt;
  // Stage 2's B, either layout.
  static constexpr size_t b2_elems = larger(static_cast<size_t>(RP) * ld_b2, static_cast<size_t>(kBN) * ld_b2t);

  __host__ __device__ static constexpr size_t mid_bytes(int m1p) {
    return align128(static_cast<size_t>(m1p) * ld_mid * sizeof(T));
  }
  __host__ __device__ static constexpr size_t work_bytes(bool spatial, bool pipelined) {
    const size_t single = (static_cast<size_t>(kBM) * ld_a + static_cast<size_t>(kBK) * ld_b1) * sizeof(T);
    const size_t stages = pipelined ? kStages * stage_elems * sizeof(T) : 0;
    const size_t stage2 = (b2_elems + (spatial ? static_cast<size_t>(kBM) * ld_mid : 0)) * sizeof(T);
    return align128(larger(larger(single, stages), stage2));
  }
  static constexpr size_t staging_bytes = align128(kWarps * 256 * sizeof(float));
  static constexpr size_t table_bytes =
      align128(kBM * sizeof(RowInfo) + kBM * sizeof(long long) + kBK * 4 * sizeof(int));
  static constexpr int ld_partial = RP + 4;
  __host__ __device__ static constexpr size_t partial_bytes(int m1p) {
    return align128(static_cast<size_t>(m1p) * ld_partial * sizeof(float));
  }
  __host__ __device__ static constexpr size_t bytes(int m1p, bool spatial, bool split, bool pipelined) {
    return mid_bytes(m1p) + work_bytes(spatial, pipelined) + staging_bytes + table_bytes +
           (split ? partial_bytes(m1p) : 0);
  }
};

}  // namespace fconv_cuda
}  // namespace trp_ext
