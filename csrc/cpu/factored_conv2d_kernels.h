// The CPU building blocks of factored_conv2d, compiled twice: for AVX2+FMA
// (factored_conv2d_avx2.cpp, used only when the CPU has both) and portably
// (factored_conv2d_generic.cpp). This header declares what both builds export; the driver is
// factored_conv2d.cpp.
//
// tap_conv, the micro-kernel: a direct convolution written as a sum over taps of shifted runs
// of one input buffer,
//   out[j * ldo + q] = act((init[j, q] + sum_t w[j * ldw + t] * in[off[t] + q]) + res[j * ldr + q]),
//   for j < rows <= kMaxRows and q < count,
// where tap t is one (input channel, kernel offset) pair and off[t] is where its run starts;
// init is out[j * ldo + q] itself when accumulating (a reduction split into parts), else
// bias[j] (or 0 without bias); the residual term is there only when res is not null (never
// with accumulate), added to the finished sum as a separate pass would add it. The weights are
// read in place: row j of a (rows, taps) matrix with row stride ldw, as a conv weight
// (n, c, kh, kw) already is.
// build_planes lays an input out so that every tap is one contiguous run (see PlaneSpec), so the
// micro-kernel needs no bounds checks and vectorises over q. copy_rows moves finished rows to
// the output.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace fconv_cpu {

constexpr int kMaxRows = 6;  // output rows per tap_conv call (register blocking)
// tap_conv's `count` must be a multiple of the vector width. A block of one vector keeps too few
// FMAs in flight (it ran at under half speed), so tap_conv finishes a count that ends in a lone
// vector with a block of three instead (from three vectors on). Bands of the direct path are
// therefore rounded up to kPositionAlign (one float vector, two double ones): a 7 x 7 output of
// 8-wide rows computes 56 positions, not 64. kCountAlign (two float vectors) is the Winograd
// path's rounding of tile counts.
constexpr int64_t kPositionAlign = 8;
constexpr int64_t kCountAlign = 16;

// The zero-padded, stride-phase-split copy of `channels` rows of images that one conv reads.
// Plane (i, a, b) holds padded rows row0 + rr (rr < hb) of phase a of the row stride, and the
// padded columns cc * sw + b (cc < wq); output position q = oh * wq + ow then reads tap
// (i, ky, kx) at q + offset(i, ky * dh, kx * dw). Columns ow >= Wo of each row are computed and
// thrown away: that keeps every tap one run.
//
// Consecutive rows share their zero padding: a row holds its left padding and its data, and a
// read past its end lands in the next row's left padding. So wq = max(Wo, ceil((width + pw) /
// sw)) suffices (see row_length; Wo so that each output row fits in one): a valid output reads
// padded columns below width + 2 * pw, so a read at plane column wq or more is padded column
// >= wq * sw >= width + pw, a right-padding zero, and lands wq * sw columns earlier in the next row of the same plane, below column 0: a
// left-padding zero. So every plane has one row more than its valid outputs read (hb counts it):
// from a plane's last row a read would otherwise run into the next plane, another phase, whose
// first columns may hold data. This halves the thrown-away columns at stride 1.
//
// Each plane is followed by kPlaneGap elements that no valid output reads, so that
// build_planes may write a short row as one whole vector, spilling zeros forward (see there).
struct PlaneSpec {
  static constexpr int64_t kPlaneGap = 8;  // the widest vector, in elements
  int64_t channels = 0;
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t hb = 0, wq = 0;

  static int64_t row_length(int64_t width, int64_t pad, int64_t stride, int64_t out_width) {
    const int64_t shared = (width + pad + stride - 1) / stride;
    return shared > out_width ? shared : out_width;
  }
  int64_t plane_size() const { return hb * wq + kPlaneGap; }
  int64_t size() const { return channels * sh * sw * plane_size(); }
  // dy, dx: the tap's dilated kernel offsets (ky * dh, kx * dw).
  int64_t offset(int64_t i, int64_t dy, int64_t dx) const {
    return ((i * sh + dy % sh) * sw + dx % sw) * plane_size() + (dy / sh) * wq + dx / sw;
  }
};

template <typename T>
using TapConvFn = void (*)(const T* in, const int64_t* off, int64_t taps, const T* w,
                           int64_t ldw, int rows, const T* bias, bool accumulate, bool relu,
                           T* out, int64_t ldo, int64_t count, const T* res, int64_t ldr);

// Fills the planes of `spec`, rows from row0, from a (channels, height, width) source with
// element strides (sc, sy, sx); all but each plane's last row, which only supplies padding.
template <typename T>
using BuildPlanesFn = void (*)(const T* src, int64_t sc, int64_t sy, int64_t sx, int64_t height,
                               int64_t width, const PlaneSpec& spec, int64_t row0, T* dst);

// dst[r * dst_row + c * dst_col] = src[r * src_row + c] for r < rows, c < cols; with a
// residual res, act(src[r * src_row + c] + res[r * res_row + c * res_col]) instead, act the
// ReLU when relu (NaN stays NaN, as in torch.relu) and the identity otherwise. dst must not
// overlap src or res.
template <typename T>
using CopyRowsFn = void (*)(const T* src, int64_t src_row, int64_t rows, int64_t cols,
                            const T* res, int64_t res_row, int64_t res_col, bool relu, T* dst,
                            int64_t dst_row, int64_t dst_col);

// cv_conv, the channel-vectorised micro-kernel (cpu/factored_conv2d_cv.cpp): for q < count,
//   out[opos[q] + k] (+)= sum_t in[pos[q] + off[t]] * wp[t * panel + k], k < panel,
// panel = kCvPanelBytes of values (kCvVectors 256-bit vectors, or half as many 512-bit ones): a
// panel of output channels, whose weights are packed tap after tap; accumulate adds to out, else
// overwrites it. Vectorised over the output channels, so positions are arbitrary addresses (a
// position list) and none is computed in vain.
constexpr int kCvVectors = 4;
constexpr int kCvPanelBytes = kCvVectors * 32;
template <typename T>
using CvConvFn = void (*)(const T* in, const int64_t* off, int64_t taps, const T* wp,
                          const int64_t* pos, int64_t count, T* out, const int64_t* opos,
                          bool accumulate);

// The channel-vectorised path's epilogue: a position-major buffer into the output, for q <
// count and n < channels:
//   out[n * out_n + q * out_q] = act((src[q * ld + n] + bias[n]) + res[n * res_n + q * res_q]),
// bias and res optional (null), act the ReLU when relu (NaN stays NaN).
template <typename T>
using CvOutputFn = void (*)(const T* src, int64_t ld, int64_t count, int64_t channels,
                            const T* bias, const T* res, int64_t res_n, int64_t res_q, bool relu,
                            T* out, int64_t out_n, int64_t out_q);

// Winograd F(2x2, 3x3) transforms (cpu/factored_conv2d_winograd.cpp).
// input: V = B^T d B for the tiles of `tile_rows` rows of `tiles_w` tiles, from zero-padded
//   planes (channel c at planes + c * plane_stride, rows of wq values; tile (ty, tx) reads rows
//   2 ty .. 2 ty + 3, columns 2 tx .. 2 tx + 3; wq is a multiple of the vector width
//   L = 32 / sizeof(T), at least 2 L ceil(tiles_w / L) + 2 (whole vectors of tiles stay in the
//   row) and at most kWinogradMaxPlaneWidth). Point xi of channel c, tile t = ty *
//   tiles_w + tx goes to v[xi * point_stride + c * channel_stride + t]; up to kWidth - 1
//   values past the last tile are written too.
// output: the products M (point xi of row j, tile t at m[xi * point_stride + j * count + t])
//   -> Y = A^T M A, in image order: output (2 ty + dy, 2 tx + dx) of row j at
//   y[j * row_stride + (2 ty + dy) * pitch + 2 tx + dx], pitch >= 2 tiles_w. Up to 2 L - 1
//   values past each image row's last tile are written too (onto the next row, or past the
//   last), and M is read up to L values past each row's last tile.
constexpr int64_t kWinogradMaxPlaneWidth = 1024;
template <typename T>
using WinogradInputFn = void (*)(const T* planes, int64_t plane_stride, int64_t wq,
                                 int64_t channels, int64_t tile_rows, int64_t tiles_w, T* v,
                                 int64_t channel_stride, int64_t point_stride);
// input_direct: the same without planes, from rows of `width` consecutive values where they are
//   (channel c's row y at src + c * sc + y * sy): tile row ty reads rows row0 + 2 ty .. row0 +
//   2 ty + 3 (zeros outside [0, height)), and padded column j of a row is its value j - pw
//   (zeros outside [0, width)); nothing else is read. wq as for input (the columns computed).
template <typename T>
using WinogradInputDirectFn = void (*)(const T* src, int64_t sc, int64_t sy, int64_t height,
                                       int64_t row0, int64_t pw, int64_t width, int64_t wq,
                                       int64_t channels, int64_t tile_rows, int64_t tiles_w,
                                       T* v, int64_t channel_stride, int64_t point_stride);
template <typename T>
using WinogradOutputFn = void (*)(const T* m, int64_t rows, int64_t count, int64_t point_stride,
                                  int64_t tile_rows, int64_t tiles_w, T* y, int64_t pitch,
                                  int64_t row_stride);

// weights: U = G g G^T of `filters` 3 x 3 filters stored one after another (9 values each):
//   point xi of filter f at u[xi * point_stride + f]; nothing else in u is written, so calls on
//   disjoint runs of filters may run in parallel.
template <typename T>
using WinogradWeightsFn = void (*)(const T* w, int64_t filters, T* u, int64_t point_stride);

// Winograd F(2, 3) along one axis (cpu/factored_conv2d_winograd_spatial.cpp, the spatial
// scheme's 3 x 1 and 1 x 3 convs; see factored_conv2d_kernels_axis_impl.h).
// height input: B^T d down the columns of rows of `width` values (channel c's row y at src + c *
//   sc + y * sy, rows outside [0, height) zeros): tile row ty of column x reads rows row0 +
//   2 ty .. row0 + 2 ty + 3, and up to kWidth - 1 values past each row's `width`, but none at
//   or past `end`; point k of channel c goes to v[k * point_stride + c * channel_stride + ty *
//   width + x], and up to kWidth - 1 values past a tile row's last column (onto the next tile
//   row's, written after it, or past the last).
// height output: the products (point k of row j, position ty * width + x at m[k * point_stride
//   + j * count + ...], read up to kWidth - 1 positions past each tile row) -> A^T m, output
//   rows 2 ty and 2 ty + 1 of row j at y[j * row_stride + (2 ty + dy) * pitch + x], x < width
//   exactly: nothing else in y is written.
// width input: B^T d along rows of `pitch` values (channel c at src + c * plane_stride): tile
//   tx of row y reads values 2 tx .. 2 tx + 3, and whole vectors of tiles read up to 2 kWidth
//   + 1 values past a row's last tile; point k to v[k * point_stride + c * channel_stride + y *
//   tiles_w + tx], up to kWidth - 1 values past a row's last tile (onto the next row's, written
//   after it, or past the last).
// width output: the products (point k of row j, tile t = row * tiles_w + tx at m[k *
//   point_stride + j * count + t], read up to kWidth - 1 tiles past each row) -> act((A^T m +
//   bias[j]) + res[j * res_stride + row * pitch + x]), x < out_w <= 2 tiles_w exactly, at
//   y[j * row_stride + row * pitch + x] (bias, res null: none; act the ReLU when relu).
// weights: G g of `filters` 3-tap filters stored one after another (3 values each, as in an (r,
//   c, 3, 1) or (n, r, 1, 3) weight): point k of filter f at u[k * point_stride + f].
template <typename T>
using WinogradHeightInputFn = void (*)(const T* src, int64_t sc, int64_t sy, int64_t height,
                                       int64_t row0, const T* end, int64_t channels,
                                       int64_t tile_rows, int64_t width, T* v,
                                       int64_t channel_stride, int64_t point_stride);
template <typename T>
using WinogradHeightOutputFn = void (*)(const T* m, int64_t rows, int64_t count,
                                        int64_t point_stride, int64_t tile_rows, int64_t width,
                                        T* y, int64_t pitch, int64_t row_stride);
template <typename T>
using WinogradWidthInputFn = void (*)(const T* src, int64_t plane_stride, int64_t pitch,
                                      int64_t channels, int64_t rows, int64_t tiles_w, T* v,
                                      int64_t channel_stride, int64_t point_stride);
template <typename T>
using WinogradWidthOutputFn = void (*)(const T* m, int64_t rows, int64_t count,
                                       int64_t point_stride, int64_t out_rows, int64_t tiles_w,
                                       int64_t out_w, const T* bias, const T* res,
                                       int64_t res_stride, bool relu, T* y, int64_t pitch,
                                       int64_t row_stride);
template <typename T>
using WinogradAxisWeightsFn = void (*)(const T* w, int64_t filters, T* u, int64_t point_stride);

template <typename T>
struct KernelSet {
  TapConvFn<T> tap_conv = nullptr;
  BuildPlanesFn<T> build_planes = nullptr;
  CopyRowsFn<T> copy_rows = nullptr;
  WinogradInputFn<T> winograd_input = nullptr;
  WinogradOutputFn<T> winograd_output = nullptr;
  WinogradWeightsFn<T> winograd_weights = nullptr;
  CvConvFn<T> cv_conv = nullptr;
  CvOutputFn<T> cv_output = nullptr;
  WinogradHeightInputFn<T> winograd_h_input = nullptr;
  WinogradHeightOutputFn<T> winograd_h_output = nullptr;
  WinogradWidthInputFn<T> winograd_w_input = nullptr;
  WinogradWidthOutputFn<T> winograd_w_output = nullptr;
  WinogradAxisWeightsFn<T> winograd_axis_weights = nullptr;
  WinogradInputDirectFn<T> winograd_input_direct = nullptr;
};

struct CpuKernels {
  KernelSet<float> f32;
  KernelSet<double> f64;
  const char* isa = "none";
  int vector_bits = 256;  // of the multiply-add loops (tap_conv, cv_conv)
};

// Always available.
CpuKernels portable_kernels();
// Null kernels when this build has no AVX2 code (a non-x86 target or compiler); only to be
// called on a CPU with AVX2 and FMA.
CpuKernels avx2_kernels();
// The same with AVX-512VL's 32 registers (factored_conv2d_avx512.cpp); only to be called on a
// CPU with AVX2, FMA, AVX-512F and AVX-512VL.
CpuKernels avx512_kernels();
// avx512_kernels with tap_conv and cv_conv on 512-bit vectors (vector_bits 512); the same results
// bit for bit. The same conditions.
CpuKernels avx512_wide_kernels();
// The CPU's 512-bit multiply-adds per second over its 256-bit ones, measured (< 1 ms): ~2 on
// cores with two 512-bit FMA units, ~1 where 512-bit FMAs run as two halves. 1 in builds without
// AVX-512 code; only to be called on a CPU with AVX-512F and AVX-512VL.
double avx512_fma_speedup();

}  // namespace fconv_cpu
}  // namespace trp_ext
