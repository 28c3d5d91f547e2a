// The float64 GEMM for small products (see small_gemm.h).
//
// factored_conv2d's micro-kernel computes out[j, q] = init[j, q] + sum_t w[j, t] in[off[t] + q]
// for up to kMaxRows rows j: with in = op(B) (row t at off[t]) and w = op(A), that is a GEMM
// block. Its rows of q must hold whole vectors, so op(B) is copied into rows padded to a
// multiple of 8 with zeros unless it already has that layout; C goes through a scratch block
// unless it can take the result as it is (alpha 1, beta 0, n a multiple of 8).
#include "cpu/small_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

#include "cpu/cpu_features.h"
#include "cpu/factored_conv2d_shared.h"
#include "cpu/tiled_transpose.h"

namespace trp_ext {
namespace cpu {
namespace {

constexpr int64_t kRowAlign = 8;  // two 4-wide vectors: no one-vector tail blocks
constexpr int64_t kMostOwnColumns = 64;      // see use_small_gemm
constexpr int64_t kDeepestOwnProduct = 512;  // see use_small_gemm

enum class OwnGemm { kAuto, kAlways, kNever };

OwnGemm own_gemm_mode() {
  static const OwnGemm mode = [] {
    const char* value = std::getenv("TRP_EXT_OWN_GEMM");
    const std::string text = value == nullptr ? "auto" : value;
    TORCH_CHECK(text == "auto" || text == "always" || text == "never",
                "TRP_EXT_OWN_GEMM must be 'auto', 'always' or 'never', got '", text, "'");
    return text == "always" ? OwnGemm::kAlways
                            : text == "never" ? OwnGemm::kNever : OwnGemm::kAuto;
  }();
  return mode;
}

}  // namespace

void small_gemm(const double* a, bool trans_a, const double* b, bool trans_b, double* c,
                int64_t m, int64_t n, int64_t k, double alpha, double beta) {
  if (m == 0 || n == 0) return;
  const int64_t width = fconv_cpu::round_up(n, kRowAlign);
  // Per-thread scratch: the solver makes ~20 products per matrix on every worker.
  thread_local std::vector<double> a_rows, b_rows, block;
  thread_local std::vector<int64_t> offsets;
  const double* w = a;
  if (trans_a) {  // A is k x m: its transpose, row-major
    a_rows.resize(m * k);
    transpose_tiled(a, k, m, a_rows.data(), k);
    w = a_rows.data();
  }
  const double* in = b;
  if (trans_b || width != n) {
    b_rows.assign(k * width, 0.0);
    if (trans_b) {  // B is n x k
      transpose_tiled(b, n, k, b_rows.data(), width);
    } else {
      for (int64_t t = 0; t < k; ++t) std::copy(b + t * n, b + t * n + n, b_rows.data() + t * width);
    }
    in = b_rows.data();
  }
  offsets.resize(k);
  for (int64_t t = 0; t < k; ++t) offsets[t] = t * width;
  const bool in_place = alpha == 1.0 && beta == 0.0 && width == n;
  double* out = c;
  if (!in_place) {
    block.resize(m * width);
    out = block.data();
  }
  const auto tap_conv = fconv_cpu::kernels_for<double>().tap_conv;
  for (int64_t i = 0; i < m; i += fconv_cpu::kMaxRows) {
    const int rows = static_cast<int>(std::min<int64_t>(fconv_cpu::kMaxRows, m - i));
    tap_conv(in, offsets.data(), k, w + i * k, k, rows, nullptr, false, false, out + i * width,
             width, width, nullptr, 0);
  }
  if (in_place) return;
  for (int64_t i = 0; i < m; ++i) {
    const double* sum = out + i * width;
    double* row = c + i * n;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = beta == 0.0 ? alpha * sum[j] : alpha * sum[j] + beta * row[j];
    }
  }
}

bool use_small_gemm(int64_t m, int64_t n, int64_t k) {
  switch (own_gemm_mode()) {
    case OwnGemm::kAlways: return true;
    case OwnGemm::kNever: return false;
    case OwnGemm::kAuto: break;
  }
  // The portable micro-kernel (no AVX2+FMA) is no match for BLAS's own vector code.
  if (!use_avx2_fma()) return false;
  // Measured product by product against MKL's dgemm (one thread, the development machine): the
  // own kernel won 1.2-2.4x wherever C had at most 64 columns and the depth was at most 512
  // (192 x 56 x 192, 56 x 56 x 192, 192 x 56 x 56, 512 x 64 x 512, 1024 x 32 x 32), drew at 72-96
  // columns and lost from 84 columns on larger products (0.65x at 84 x 84 x 192, 0.8x at
  // 512 x 150 x 512) and at a depth of 1024 (0.6-0.9x).
  return n <= kMostOwnColumns && k <= kDeepestOwnProduct;
}

}  // namespace cpu
}  // namespace trp_ext
