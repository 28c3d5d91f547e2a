// The process-wide switches that choose among the CPU factored_conv2d's paths: Winograd, the
// channel-vectorised path and split images (Python: trp_ext.ops.cpu_winograd,
// cpu_channel_vectorised, cpu_split_images).
#pragma once

#include "common/path_switch.h"

namespace trp_ext {
namespace fconv_cpu {

// Each path's switch (defined in factored_conv2d_shared.cpp), read by the path's rule.
PathSwitch& winograd_switch();  // use_winograd
PathSwitch& cv_switch();        // use_cv
PathSwitch& split_switch();     // split_parts (factored_conv2d.cpp)

}  // namespace fconv_cpu
}  // namespace trp_ext
