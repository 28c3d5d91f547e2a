// The CPU band path's split images (factored_conv2d.cpp: run_split_image): one image's work cut
// across threads by channels instead of by bands of output rows, under split_switch()
// (factored_conv2d_path_switch.h): kAuto where it measured faster (see split_parts), kAlways
// every call the band path runs, into at least two parts.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace fconv_cpu {

// The calls that have split their images so far, process-wide (tests: the results are the same
// bit for bit either way).
int64_t split_image_calls();

}  // namespace fconv_cpu
}  // namespace trp_ext
