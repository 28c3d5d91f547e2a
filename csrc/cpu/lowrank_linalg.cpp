// Dense float64 building blocks of the CPU lowrank_project kernel (see lowrank_linalg.h).
#include "cpu/lowrank_linalg.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/scratch_pool.h"
#include "cpu/simd.h"
#include "cpu/small_gemm.h"

// The BLAS/LAPACK that libtorch_cpu exports (MKL or OpenBLAS, LP64), called directly: the
// kernel makes ~20 small products per matrix, and at::mm's dispatch, views and checks cost
// several microseconds each, as much as a 32 x 32 product itself. Weak references: a torch
// build that does not export them leaves them null, and the ATen path below is used instead.
extern "C" {
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info)
    __attribute__((weak));
}

namespace trp_ext {
namespace cpu {
namespace {

// TRP_EXT_NO_DIRECT_BLAS=1 takes the ATen path even where the symbols exist: the tests run it
// that way too (with TRP_EXT_OWN_GEMM=never, so that every product takes it), so the path a
// torch build without exported BLAS takes is not left untested.
bool direct_blas() {
  static const bool enabled = [] {
    const char* value = std::getenv("TRP_EXT_NO_DIRECT_BLAS");
    return value == nullptr || std::string(value) != "1";
  }();
  return enabled && dgemm_ != nullptr && dpotrf_ != nullptr;
}

// Sizes beyond int are left to ATen (never reached by conv weights).
bool fits_int(int64_t a, int64_t b, int64_t c) {
  constexpr int64_t kMax = 1 << 30;
  return a < kMax && b < kMax && c < kMax;
}

void gemm_call(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const double* alpha, const double* a, const int* lda, const double* b,
               const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm_call(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const float* alpha, const float* a, const int* lda, const float* b,
               const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C (m x n) = alpha op(A) op(B) + beta C as the column-major C^T = op(B)^T op(A)^T.
template <typename T>
bool blas_gemm(const T* a, bool trans_a, const T* b, bool trans_b, T* c, int64_t m, int64_t n,
               int64_t k, T alpha, T beta) {
  if (!direct_blas() || !fits_int(m, n, k)) return false;
  if (std::is_same_v<T, float> && sgemm_ == nullptr) return false;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int lda = static_cast<int>(std::max<int64_t>(1, trans_a ? m : k));
  const int ldb = static_cast<int>(std::max<int64_t>(1, trans_b ? k : n));
  const int ldc = static_cast<int>(std::max<int64_t>(1, n));
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  gemm_call(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
  return true;
}

template <typename T>
at::Tensor view(const T* data, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<T*>(data), {rows, cols},
                       at::TensorOptions(c10::CppTypeToScalarType<T>::value));
}

// C = alpha op(A) op(B) + beta C through ATen's addmm on views of the buffers.
template <typename T>
void aten_gemm(const T* a, bool trans_a, const T* b, bool trans_b, T* c, int64_t m, int64_t n,
               int64_t k, T alpha, T beta) {
  at::Tensor c_view = view(c, m, n);
  const at::Tensor a_view = trans_a ? view(a, k, m).t() : view(a, m, k);
  const at::Tensor b_view = trans_b ? view(b, n, k).t() : view(b, k, n);
  at::addmm_out(c_view, c_view, a_view, b_view, beta, alpha);
}

// s = L L^T in place (lower triangle of the row-major n x n s). Returns false on a pivot that is
// not safely positive, i.e. numerically dependent columns; spread: max/min pivot^2.
bool cholesky_in_place(double* s, int64_t n, double* spread) {
  double lo = INFINITY, hi = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    double* row_j = s + j * n;
    const double d = row_j[j] - simd::sum_squares(row_j, j);
    if (!(d > 1e-12 * row_j[j]) || !(d > 0.0)) return false;
    const double pivot = std::sqrt(d);
    row_j[j] = pivot;
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    const double inv = 1.0 / pivot;
    for (int64_t i = j + 1; i < n; ++i) {
      double* row_i = s + i * n;
      row_i[j] = (row_i[j] - simd::dot(row_i, row_j, j)) * inv;
    }
  }
  *spread = n ? hi / lo : 1.0;
  return true;
}

// inverse <- L^-1 for the lower triangle L of the row-major n x n l. Row i of L^-1 is
// -(sum_{j<i} L_ij row_j(L^-1)) / L_ii, with 1 / L_ii on the diagonal.
TRP_INLINE void lower_inverse_impl(const double* l, int64_t n, double* inverse) {
  std::fill(inverse, inverse + n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* row = inverse + i * n;
    const double* l_row = l + i * n;
    for (int64_t j = 0; j < i; ++j) simd::axpy(l_row[j], inverse + j * n, row, j + 1);
    const double inv = 1.0 / l_row[i];
    for (int64_t j = 0; j < i; ++j) row[j] *= -inv;
    row[i] = inv;
  }
}
TRP_CPU_DISPATCH(void, lower_inverse, (const double* l, int64_t n, double* inverse),
                 (l, n, inverse))

// Dot products of rows x[0..R) with rows y[0..4) (length len) into out[0..R): 4 R vector
// accumulators. R = 3 fills AVX2's 16 vector registers (12 sums, 3 row values, the pinned column
// value) and takes 7 loads per 12 FMAs; R = 2 took 6 per 8, with only the 8 sums that FMA
// latency times its two pipes needs. Every value is summed in the same order for any R.
// Measured standalone, one thread, R = 3 against 2: 64 x 576 1.16-1.17x (49 against 57 us, 84% of
// the FMA peak), 192 x 192 1.05-1.15x, 128 x 1152 1.23-1.25x, 16 x 144 to 96 x 96 0.96-1.33x
// (bench/RESULTS.md). R = 4 with AVX-512VL's 32 registers: 1.06x more at 64 x 576, 1.16x at
// 128 x 1152, but 0.96x at 96 x 96: not kept.
template <bool kAvx2, int R, typename S>
TRP_INLINE void dot_block(const S* const* x, const S* const* y, int64_t len, double (*out)[4]) {
  int64_t l = 0;
#if TRP_VECTOR_LOOPS
  simd::vd4 s[R][4];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < 4; ++c) s[r][c] = simd::splat4(0.0);
  }
  for (; l + 4 <= len; l += 4) {
    simd::vd4 u[R];
    for (int r = 0; r < R; ++r) u[r] = simd::load4_as_double(x[r] + l);
    for (int c = 0; c < 4; ++c) {
      simd::vd4 v = simd::load4_as_double(y[c] + l);
      // One load for all R FMAs: folded into each as a memory operand (GCC's choice here
      // without the pin), the loads rather than the FMAs bounded the loop.
      TRP_PIN_VECTOR(kAvx2, v);
      for (int r = 0; r < R; ++r) s[r][c] += u[r] * v;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < 4; ++c) out[r][c] = simd::sum4(s[r][c]);
  }
#else
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < 4; ++c) out[r][c] = 0.0;
  }
#endif
  for (; l < len; ++l) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < 4; ++c) {
        out[r][c] += static_cast<double>(x[r][l]) * static_cast<double>(y[c][l]);
      }
    }
  }
}

// The lower triangle by blocks of 3 rows x 4 columns, every value written to both triangles.
// Columns go outermost: a block's 4 column rows (4 len doubles, 18 KiB at len 576) stay in L1
// while the rows below them stream past, 3 rows from L2 per block instead of 7 (measured, with
// blocks of 2 rows: as fast as row pairs outermost at 16 x 144 to 64 x 576, up to 1.1x faster
// at 192 x 192). Blocks on the diagonal also compute a few upper values, bit for bit the values
// their mirror blocks give (the same products summed in the same order), so writing both is
// harmless.
template <bool kAvx2, typename S>
TRP_INLINE void gram_own_impl(const S* a, int64_t k, int64_t len, double* g) {
  const auto put = [&](int64_t r, int64_t c, double v) {
    g[r * k + c] = v;
    g[c * k + r] = v;
  };
  int64_t j = 0;
  for (; j + 4 <= k; j += 4) {
    const S* y[4] = {a + j * len, a + (j + 1) * len, a + (j + 2) * len, a + (j + 3) * len};
    const auto rows = [&](auto block_rows, int64_t i) {
      constexpr int R = decltype(block_rows)::value;
      const S* x[R];
      for (int r = 0; r < R; ++r) x[r] = a + (i + r) * len;
      double out[R][4];
      dot_block<kAvx2, R>(x, y, len, out);
      for (int r = 0; r < R; ++r) {
        for (int c = 0; c < 4; ++c) put(i + r, j + c, out[r][c]);
      }
    };
    int64_t i = j;
    for (; i + 3 <= k; i += 3) rows(std::integral_constant<int, 3>{}, i);
    if (k - i == 2) rows(std::integral_constant<int, 2>{}, i);
    if (k - i == 1) rows(std::integral_constant<int, 1>{}, i);
  }
  for (; j < k; ++j) {  // the last k % 4 columns
    for (int64_t i = j; i < k; ++i) put(i, j, simd::dot_of(a + i * len, a + j * len, len));
  }
}
TRP_CPU_DISPATCH_TEMPLATE(void, gram_own, (const double* a, int64_t k, int64_t len, double* g),
                          (a, k, len, g))
template <bool kAvx2>
TRP_INLINE void gram_own_float_impl(const float* a, int64_t k, int64_t len, double* g) {
  gram_own_impl<kAvx2>(a, k, len, g);
}
TRP_CPU_DISPATCH_TEMPLATE(void, gram_own_float, (const float* a, int64_t k, int64_t len, double* g),
                          (a, k, len, g))

// Which Gram matrices the own kernel computes: rows of up to kOwnGramMaxLength values, or
// matrices of up to kOwnGramMaxSize values (2 MiB, about what the two cores' L2 holds); BLAS's
// full product the others. Measured one thread each (as inside the kernel's parallel loop), the
// own kernel, which does half the multiply-adds, was 1.3-2.3x faster up to 192 x 576 and 1.7-2.1x
// at 64 x 1024, 128 x 1152 and 128 x 2048; on larger ones it still won 1.2-1.4x alone (0.9x at
// 1536 x 1536), but streams its rows from L3 once per block of four, which two threads share.
constexpr int64_t kOwnGramMaxLength = 1024;
constexpr int64_t kOwnGramMaxSize = int64_t{1} << 18;

bool own_gram(int64_t k, int64_t len) {
  return len <= kOwnGramMaxLength || k * len <= kOwnGramMaxSize;
}

}  // namespace

void gram(const double* a, int64_t k, int64_t len, double* g) {
  if (own_gram(k, len)) {
    gram_own(a, k, len, g);
    return;
  }
  matmul(a, false, a, true, g, k, k, len);
  for (int64_t i = 0; i < k; ++i) {  // BLAS may round G_ij and G_ji differently
    for (int64_t j = 0; j < i; ++j) g[i * k + j] = g[j * k + i] = 0.5 * (g[i * k + j] + g[j * k + i]);
  }
}

void gram(const float* a, int64_t k, int64_t len, double* g) {
  if (own_gram(k, len)) {
    gram_own_float(a, k, len, g);
    return;
  }
  ScratchVector<double> rows(a, a + k * len);  // BLAS's product needs float64 rows
  gram(rows.data(), k, len, g);
}

void matmul(const double* a, bool trans_a, const double* b, bool trans_b, double* c, int64_t m,
            int64_t n, int64_t k) {
  // beta = 0: C is write-only on every path (ATen's addmm ignores its input then, as BLAS does).
  matmul_accumulate(a, trans_a, b, trans_b, c, m, n, k, 1.0, 0.0);
}

namespace {

// C = alpha op(A) op(B) + beta C on the first path that takes it: the own small-matrix GEMM
// (float64), BLAS called directly, ATen.
template <typename T>
void gemm(const T* a, bool trans_a, const T* b, bool trans_b, T* c, int64_t m, int64_t n,
          int64_t k, T alpha, T beta) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // beta == 0 makes C write-only, as in BLAS: whatever it held (NaN included) is not kept.
    for (int64_t i = 0; i < m * n; ++i) c[i] = beta == T(0) ? T(0) : c[i] * beta;
    return;
  }
  if constexpr (std::is_same_v<T, double>) {
    if (use_small_gemm(m, n, k)) {
      small_gemm(a, trans_a, b, trans_b, c, m, n, k, alpha, beta);
      return;
    }
  }
  if (blas_gemm(a, trans_a, b, trans_b, c, m, n, k, alpha, beta)) return;
  aten_gemm(a, trans_a, b, trans_b, c, m, n, k, alpha, beta);
}

}  // namespace

void matmul_accumulate(const double* a, bool trans_a, const double* b, bool trans_b, double* c,
                       int64_t m, int64_t n, int64_t k, double alpha, double beta) {
  gemm(a, trans_a, b, trans_b, c, m, n, k, alpha, beta);
}

void matmul(const float* a, bool trans_a, const float* b, bool trans_b, float* c, int64_t m,
            int64_t n, int64_t k) {
  gemm(a, trans_a, b, trans_b, c, m, n, k, 1.0f, 0.0f);
}

namespace {
// Householder QR, through LAPACK: for columns too close to dependent for Cholesky QR.
bool householder_qr(double* q, int64_t rows, int64_t cols) {
  at::Tensor block = view(q, rows, cols);
  auto [basis, r] = at::linalg_qr(block);
  const at::Tensor diag = r.diagonal().abs();
  if (!(diag.min().item<double>() > 1e-13 * diag.max().item<double>())) return false;
  block.copy_(basis);
  return true;
}
}  // namespace

bool orthonormalize_columns(double* q, int64_t rows, int64_t cols) {
  if (cols == 0) return true;
  // Cholesky QR leaves ||Q^T Q - I|| ~ eps * cond(Q)^2: one pass for a well-conditioned block,
  // another (cond ~ 1 by then) when the pivots spread.
  std::vector<double> gram(cols * cols);
  if (direct_blas() && fits_int(rows, cols, cols)) {
    // The same through dpotrf. Row-major gram read column-major is the same symmetric matrix;
    // its upper Cholesky factor (column-major) is, read row-major, the lower L of
    // Q^T Q = L L^T. Q <- Q L^-T then takes L^-1 (cols^3 / 6, level 1) and one GEMM: twice as
    // fast as dtrsm on these tall, narrow blocks, and exact enough for the passes here (the
    // inverse's error ~ eps cond(L) is below the eps cond(L)^2 of Cholesky QR itself).
    const int n = static_cast<int>(cols);
    std::vector<double> diag(cols), inverse(cols * cols);
    ScratchVector<double> product(rows * cols);  // rows x cols
    for (int pass = 0; pass < 3; ++pass) {
      matmul(q, true, q, false, gram.data(), cols, cols, rows);
      for (int64_t j = 0; j < cols; ++j) diag[j] = gram[j * cols + j];
      int info = 0;
      const char upper = 'U';
      dpotrf_(&upper, &n, gram.data(), &n, &info);
      if (info != 0) break;
      double lo = INFINITY, hi = 0.0;
      bool dependent = false;
      for (int64_t j = 0; j < cols; ++j) {
        const double d = gram[j * cols + j] * gram[j * cols + j];  // the pivot
        if (!(d > 1e-12 * diag[j]) || !(d > 0.0)) dependent = true;
        lo = std::min(lo, d);
        hi = std::max(hi, d);
      }
      if (dependent) break;
      lower_inverse(gram.data(), cols, inverse.data());
      matmul(q, false, inverse.data(), true, product.data(), rows, cols, cols);
      std::copy(product.begin(), product.end(), q);
      if (hi / lo < 1e2) return true;
    }
    return householder_qr(q, rows, cols);
  }
  for (int pass = 0; pass < 3; ++pass) {
    matmul(q, true, q, false, gram.data(), cols, cols, rows);
    double spread = 0.0;
    if (!cholesky_in_place(gram.data(), cols, &spread)) break;
    // Q <- Q L^-T through LAPACK's triangular solve (reads only the lower triangle of gram).
    at::Tensor block = view(q, rows, cols);
    block.copy_(at::linalg_solve_triangular(view(gram.data(), cols, cols).t(), block,
                                            /*upper=*/true, /*left=*/false));
    if (spread < 1e2) return true;
  }
  return householder_qr(q, rows, cols);
}

void lapack_eigh(const double* a, int64_t n, double* values, double* vectors) {
  auto [w, v] = at::linalg_eigh(view(a, n, n));
  const at::Tensor vc = v.contiguous();
  const double* wp = w.const_data_ptr<double>();
  const double* vp = vc.const_data_ptr<double>();
  for (int64_t j = 0; j < n; ++j) values[j] = wp[n - 1 - j];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) vectors[i * n + j] = vp[i * n + (n - 1 - j)];
  }
}

}  // namespace cpu
}  // namespace trp_ext
