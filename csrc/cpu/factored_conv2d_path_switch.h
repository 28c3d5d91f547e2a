// The process-wide switches that choose among the CPU factored_conv2d's paths: Winograd, the
// channel-vectorised path, split images and 512-bit multiply-add loops (Python:
// trp_ext.ops.cpu_winograd, cpu_channel_vectorised, cpu_split_images, cpu_wide_vectors).
#pragma once

#include "common/path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

// Each path's switch (defined in factored_conv2d_shared.cpp), read by the path's rule.
PathSwitch& winograd_switch();  // use_winograd
PathSwitch& cv_switch();        // use_cv
PathSwitch& split_switch();     // split_parts (factored_conv2d.cpp)
PathSwitch& wide_switch();      // cpu_kernels (factored_conv2d_shared.cpp)

}  // namespace fconv_cpu
}  // namespace trp_ext
