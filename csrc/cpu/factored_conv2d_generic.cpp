// The portable build of the factored_conv2d CPU kernels: plain arrays the compiler may vectorise
// for whatever the baseline instruction set is. Used when the CPU (or ATEN_CPU_CAPABILITY) rules
// out AVX2, and on non-x86 targets.
#include "cpu/factored_conv2d_kernels.h"
#include "cpu/factored_conv2d_kernels_impl.h"
// After the templates it names.
#include "cpu/factored_conv2d_kernel_table.h"

namespace trp_ext {
namespace fconv_cpu {
namespace {

// One "register" of 32 bytes, as on AVX2, so both builds block the same way.
template <typename T>
struct PortableVec {
  using Scalar = T;
  static constexpr int kWidth = 32 / sizeof(T);
  static constexpr int kRegisters = 16;
  struct Reg {
    T v[kWidth];
  };
  static Reg zero() { return set1(T(0)); }
  static Reg set1(T s) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.v[i] = s;
    return r;
  }
  static Reg load(const T* p) {
    Reg r;
    for (int i = 0; i < kWidth; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(T* p, const Reg& r) {
    for (int i = 0; i < kWidth; ++i) p[i] = r.v[i];
  }
  static Reg fma(const Reg& a, const Reg& b, Reg c) {
    for (int i = 0; i < kWidth; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static Reg add(Reg a, const Reg& b) {
    for (int i = 0; i < kWidth; ++i) a.v[i] += b.v[i];
    return a;
  }
  static Reg sub(Reg a, const Reg& b) {
    for (int i = 0; i < kWidth; ++i) a.v[i] -= b.v[i];
    return a;
  }
  static Reg mul(Reg a, const Reg& b) {
    for (int i = 0; i < kWidth; ++i) a.v[i] *= b.v[i];
    return a;
  }
  // NaN stays NaN, as in torch.relu.
  static Reg relu(Reg r) {
    for (int i = 0; i < kWidth; ++i) r.v[i] = r.v[i] < T(0) ? T(0) : r.v[i];
    return r;
  }
  static Reg load_partial(const T* p, int64_t n) {
    Reg r = zero();
    for (int64_t i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
  }
  static Reg load_window(const T* p, int64_t lo, int64_t hi) {
    Reg r = zero();
    for (int64_t i = lo; i < hi; ++i) r.v[i] = p[i];
    return r;
  }
  static void store_partial(T* p, const Reg& r, int64_t n) {
    for (int64_t i = 0; i < n; ++i) p[i] = r.v[i];
  }
  static void interleave(const Reg& a, const Reg& b, Reg* first, Reg* second) {
    for (int i = 0; i < kWidth / 2; ++i) {
      first->v[2 * i] = a.v[i];
      first->v[2 * i + 1] = b.v[i];
      second->v[2 * i] = a.v[kWidth / 2 + i];
      second->v[2 * i + 1] = b.v[kWidth / 2 + i];
    }
  }
  static void deinterleave3(const Reg& a, const Reg& b, const Reg& c, Reg* x0, Reg* x1, Reg* x2) {
    T all[3 * kWidth];
    store(all, a);
    store(all + kWidth, b);
    store(all + 2 * kWidth, c);
    for (int i = 0; i < kWidth; ++i) {
      x0->v[i] = all[3 * i];
      x1->v[i] = all[3 * i + 1];
      x2->v[i] = all[3 * i + 2];
    }
  }
  static void deinterleave(const Reg& a, const Reg& b, Reg* even, Reg* odd) {
    for (int i = 0; i < kWidth / 2; ++i) {
      even->v[i] = a.v[2 * i];
      odd->v[i] = a.v[2 * i + 1];
      even->v[kWidth / 2 + i] = b.v[2 * i];
      odd->v[kWidth / 2 + i] = b.v[2 * i + 1];
    }
  }
};

}  // namespace

CpuKernels portable_kernels() {
  return kernel_table<PortableVec<float>, PortableVec<double>>("portable");
}

}  // namespace fconv_cpu
}  // namespace trp_ext
