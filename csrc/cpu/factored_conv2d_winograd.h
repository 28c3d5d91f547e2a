// The Winograd path of the CPU factored_conv2d (channel scheme, 3 x 3 stride-1 first conv).
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

// The Winograd calls so far (process-wide) whose threads each transformed the weights into
// their own buffer instead of sharing one (see kPrivateWeightBytes).
int64_t winograd_private_weight_calls();

}  // namespace fconv_cpu
}  // namespace trp_ext
