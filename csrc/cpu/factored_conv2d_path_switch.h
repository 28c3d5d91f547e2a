// The process-wide switches that choose among the CPU factored_conv2d's paths: Winograd, the
// channel-vectorised path and split images (Python: trp_ext.ops.cpu_winograd,
// cpu_channel_vectorised, cpu_split_images).
#pragma once

#include <atomic>

namespace trp_ext {
namespace fconv_cpu {

// kAuto: the path where it measured faster (each path's rule); kNever: never; kAlways: every
// call it can take (tests, A/B benches). The values are the Python modes' order.
enum class PathMode : int { kAuto = 0, kNever = 1, kAlways = 2 };

class PathSwitch {
 public:
  void set(PathMode mode) { mode_.store(static_cast<int>(mode)); }
  PathMode get() const { return static_cast<PathMode>(mode_.load()); }

 private:
  std::atomic<int> mode_{static_cast<int>(PathMode::kAuto)};
};

// Each path's switch (defined in factored_conv2d_shared.cpp), read by the path's rule.
PathSwitch& winograd_switch();  // use_winograd
PathSwitch& cv_switch();        // use_cv
PathSwitch& split_switch();     // split_parts (factored_conv2d.cpp)

}  // namespace fconv_cpu
}  // namespace trp_ext
