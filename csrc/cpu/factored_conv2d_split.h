// The switch for the CPU band path's split images (factored_conv2d.cpp: run_split_image): one
// image's work cut across threads by channels instead of by bands of output rows.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace fconv_cpu {

// kAuto: where it measured faster (see split_parts); kNever: never; kAlways: every call the
// band path runs, into at least two parts (tests, A/B benches).
enum class SplitMode : int { kAuto = 0, kNever = 1, kAlways = 2 };
void set_split_mode(SplitMode mode);
SplitMode split_mode();
// The calls that have split their images so far, process-wide (tests: the results are the same
// bit for bit either way).
int64_t split_image_calls();

}  // namespace fconv_cpu
}  // namespace trp_ext
