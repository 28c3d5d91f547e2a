// What the two CPU drivers of factored_conv2d share: the kernels of this CPU and the blocking
// of output rows for the micro-kernel.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/factored_conv2d_kernels.h"

namespace trp_ext {
namespace fconv_cpu {

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Values of type T per vector of the kernels (every build's layout kernels use 32-byte vectors;
// the wide build's multiply-add loops take counts in these units too).
template <typename T>
constexpr int64_t vector_width() {
  return 32 / static_cast<int64_t>(sizeof(T));
}

// The AVX-512VL kernels when cpu::use_avx512vl() allows them (with 512-bit multiply-add loops
// where wide_switch() and, under auto, the CPU's measured speed ask for them), else the AVX2+FMA
// ones when cpu::use_avx2_fma() does, else the portable ones.
const CpuKernels& cpu_kernels();

template <typename T>
const KernelSet<T>& kernels_for();
template <>
inline const KernelSet<float>& kernels_for<float>() {
  return cpu_kernels().f32;
}
template <>
inline const KernelSet<double>& kernels_for<double>() {
  return cpu_kernels().f64;
}

// Splits `rows` into near-equal blocks of at most kMaxRows: (first row, size) pairs. Computed
// once per call: work items reuse them.
using RowBlocks = std::vector<std::pair<int64_t, int>>;
RowBlocks row_blocks(int64_t rows);

// Whether an output with strides os (N, C, H, W) is NCHW, its rows of out_w values one after
// another, and a residual (if any, strides rs) has its rows laid out alike, at any batch and
// channel strides (0 where it broadcasts): what conv1x1_into_rows needs to write a band of
// output rows, and read the residual's, as consecutive positions.
inline bool rows_like_nchw(int64_t out_w, const int64_t* os, bool has_residual, const int64_t* rs) {
  return os[3] == 1 && os[2] == out_w && (!has_residual || (rs[3] == 1 && rs[2] == out_w));
}

// The second (1x1) conv of `rows` output channels over `total` consecutive positions, written
// straight into an output laid out as rows of those positions (dst[j * ldd + q]), with the
// epilogue (bias, then the residual res[j * ldr + q] if not null, then the ReLU): the micro-kernel
// over the whole vectors, and, when total is not a whole number of them, one more vector over
// the last kPositionAlign positions into `scratch` (rows of ld_scratch >= kPositionAlign), of
// which the positions past the whole vectors are copied. total >= kPositionAlign.
template <typename T>
void conv1x1_into_rows(const KernelSet<T>& k, const T* in, const int64_t* taps, int64_t tap_count,
                       const T* w, int rows, const T* bias, bool relu, const T* res, int64_t ldr,
                       T* dst, int64_t ldd, int64_t total, T* scratch, int64_t ld_scratch) {
  const int64_t whole = total / kPositionAlign * kPositionAlign;
  k.tap_conv(in, taps, tap_count, w, tap_count, rows, bias, false, relu, dst, ldd, whole, res, ldr);
  if (whole == total) return;
  const int64_t last = total - kPositionAlign;
  k.tap_conv(in + last, taps, tap_count, w, tap_count, rows, bias, false, relu, scratch,
             ld_scratch, kPositionAlign, res ? res + last : nullptr, ldr);
  for (int j = 0; j < rows; ++j) {
    k.copy_rows(scratch + j * ld_scratch + (whole - last), 0, 1, total - whole, nullptr, 0, 0,
                false, dst + j * ldd + whole, 0, 1);
  }
}

// Rows [row0, row0 + out_rows) of output channels [start, start + size) of `images` images
// from image0, from a buffer that holds them per channel (src_ld apart) and per image
// (image_stride apart) in rows of src_pitch values, out to the output (element strides os)
// with the residual (if not null, strides rs) added, then the ReLU when relu: the copy-out of
// the paths whose output is not laid out as their rows.
template <typename T>
void copy_out_rows(const KernelSet<T>& k, const T* src, int64_t src_ld, int64_t image_stride,
                   int64_t src_pitch, int64_t images, int64_t out_rows, int64_t out_w,
                   int64_t image0, int64_t start, int size, int64_t row0, const T* residual,
                   const int64_t* rs, bool relu, T* out, const int64_t* os) {
  for (int64_t i = 0; i < images; ++i) {
    T* dst = out + (image0 + i) * os[0] + start * os[1] + row0 * os[2];
    const T* res = residual ? residual + (image0 + i) * rs[0] + start * rs[1] + row0 * rs[2]
                            : nullptr;
    for (int j = 0; j < size; ++j) {
      k.copy_rows(src + j * src_ld + i * image_stride, src_pitch, out_rows, out_w,
                  res ? res + j * rs[1] : nullptr, rs[2], rs[3], relu, dst + j * os[1], os[2],
                  os[3]);
    }
  }
}

// Below this many multiply-adds a thread costs more to wake than it saves (a parallel region
// is ~10 us here, ~1M multiply-adds at the kernel's rate); small calls run on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 19;

// at::parallel_for's grain for work items of `work` multiply-adds each.
inline int64_t parallel_grain(int64_t work) {
  const int64_t per_item = work > 1 ? work : 1;
  return kMinWorkPerThread / per_item > 1 ? kMinWorkPerThread / per_item : 1;
}

// The calling thread's scratch, cut into N parts of the given sizes (each rounded up to 16
// values). The storage is kept between calls (ATen's worker threads live on), so a call
// neither allocates nor touches fresh pages; nothing in it is initialised here.
template <typename T, size_t N>
std::array<T*, N> thread_buffers(const std::array<int64_t, N>& sizes) {
  thread_local std::vector<T> storage;
  int64_t total = 0;
  for (int64_t size : sizes) total += round_up(size, 16);
  if (static_cast<int64_t>(storage.size()) < total) storage.resize(total);
  std::array<T*, N> parts;
  T* cursor = storage.data();
  for (size_t i = 0; i < N; ++i) {
    parts[i] = cursor;
    cursor += round_up(sizes[i], 16);
  }
  return parts;
}

// The buffer of a call that the calling thread sets up and its parallel region reads (Winograd's
// transformed weights, the channel-vectorised path's packed panels, a split image's shared
// intermediate): the calling thread's, kept between calls up to kRetainedCallBytes (ImageNet
// ResNets' largest Winograd weights take 4 MiB), since a fresh one costs a page fault per 4 KiB
// on every call; larger ones go to the call's own `own`, so that no thread holds on to them. One
// buffer per value type, which the paths share: a call uses it only while it runs. Nothing in it
// is initialised here.
constexpr int64_t kRetainedCallBytes = 16 << 20;
template <typename T>
T* call_buffer(int64_t size, std::vector<T>* own) {
  thread_local std::vector<T> retained;
  std::vector<T>& buffer =
      size * static_cast<int64_t>(sizeof(T)) <= kRetainedCallBytes ? retained : *own;
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

}  // namespace fconv_cpu
}  // namespace trp_ext
