// The channel-vectorised path of the CPU factored_conv2d: both convs vectorised over output
// channels with packed weights, over exactly the output positions (small outputs).
#pragma once

#include <cstdint>

#include "common/factored_conv2d_checks.h"
#include "cpu/factored_conv2d_path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

// Whether a call with geometry g, whose band path would keep its busiest thread for
// band_makespan multiply-adds (computed positions included), takes this path under cv_switch():
// kAuto where its estimated work is lower, kAlways for every call the band path would run;
// element_size: bytes per value.
bool use_cv(const FconvGeometry& g, int64_t band_makespan, int64_t element_size);

// The whole call: x and out with element strides xs and os (NCHW order), w1 and w2 contiguous,
// bias null or (n,), residual null or read with strides rs (the output's shape, 0 strides where
// it broadcasts).
template <typename T>
void cv_factored_conv2d(const FconvGeometry& g, const T* x, const int64_t* xs, const T* w1,
                        const T* w2, const T* bias, const T* residual, const int64_t* rs, T* out,
                        const int64_t* os);

}  // namespace fconv_cpu
}  // namespace trp_ext
