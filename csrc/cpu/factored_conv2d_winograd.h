// The Winograd paths of the CPU factored_conv2d: F(2x2, 3x3) for the channel scheme's 3 x 3
// stride-1 first conv, F(2, 3) along each axis for the spatial scheme's 3 x 1 and 1 x 3 convs.
#pragma once

#include <cstdint>

#include "common/factored_conv2d_checks.h"
#include "cpu/factored_conv2d_path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

// Whether a call with geometry g takes the Winograd path under winograd_switch(): kAuto where
// it measured faster (large enough rank and channel counts), kAlways wherever it applies.
bool use_winograd(const FconvGeometry& g);

// The whole call: x and out with element strides xs and os (NCHW order), w1 (r, c, 3, 3) and
// w2 (n, r, 1, 1) contiguous, bias null or (n,), residual null or read with strides rs (the
// output's shape, 0 strides where it broadcasts).
template <typename T>
void winograd_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs,
                              const T* w1, const T* w2, const T* bias, const T* residual,
                              const int64_t* rs, T* out, const int64_t* os);

// use_winograd's kAuto rule for the spatial scheme (factored_conv2d_winograd_spatial.cpp).
bool spatial_winograd_pays(const FconvGeometry& g);

// A spatial-scheme call with geometry g that use_winograd lets take Winograd (3 x 1 and 1 x 3
// convs at stride 1, dilation 1): F(2, 3) along each axis (factored_conv2d_winograd_spatial.cpp).
template <typename T>
void spatial_winograd_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs,
                                      const T* w1, const T* w2, const T* bias,
                                      const T* residual, const int64_t* rs, T* out,
                                      const int64_t* os);

// Both paths' cache budgets. An item's products (points x rank x tiles) are kept near
// kWinogradProductBytes, a channel group's transformed input (points x channels x tiles) near
// kWinogradGroupBytes, so that both stay in the 1 MiB L2 of the Zen 4 EPYC across the point
// products. Measured on the 2-D path: 448 KiB rather than 256 lets a batch-32 item hold a whole
// 28 x 28 image at rank 32 (196 tiles, not bands of 112 and 84) and two 14 x 14 images at rank 64
// (not one): in-process, alternating the builds, 1.06-1.12x on 128-128 28x28 r32 b32 and 256-256
// 14x14 r64 b32, the other bench layers unchanged (64-64 8x8 r20 b32 now 16 images an item, not
// 8); 512 KiB (four 7 x 7 images at rank 128, not two) made 512-512 7x7 r128 b32 1.00-1.16x
// slower. On the spatial path (spatial 512-512 7x7 r128 b32, one thread), 128-448 KiB of
// products and 64-512 KiB of input were alike within the noise (10.4-11.9 ms); 896 KiB of
// products was slower (12.3-14.0 ms).
constexpr int64_t kWinogradProductBytes = 448 << 10;
constexpr int64_t kWinogradGroupBytes = 512 << 10;

// How both Winograd paths cut a call into work items: `images` whole images, or one image's
// band of `rows` tile rows (of `row_tiles` tiles each), `bands` per image, `items` in all.
struct WinogradItems {
  int64_t images = 1, rows = 0, bands = 0, items = 0;
};
// The shortest makespan in tile positions (an item's tiles rounded up to kCountAlign; the
// threads take ceil(items / threads) items each), up to max_tiles per item (more when one tile
// row has more); among equal ones the largest items. Small images are grouped, so that each
// weight loaded serves more tiles.
WinogradItems choose_winograd_items(int64_t tile_rows, int64_t row_tiles, int64_t batch,
                                    int64_t threads, int64_t max_tiles);

// Whether each of the call's busy_threads transforms the weights (weight_bytes) into its own
// buffer instead of sharing one (counted, see winograd_private_weight_calls): every item reads
// all of them, and a buffer written by one core and read by the other moves between the cores
// on every call.
bool winograd_private_weights(int64_t busy_threads, int64_t weight_bytes);

// The Winograd calls so far (process-wide) whose threads each transformed the weights into
// their own buffer instead of sharing one (see kPrivateWeightBytes).
int64_t winograd_private_weight_calls();

}  // namespace fconv_cpu
}  // namespace trp_ext
