// Dense float64 building blocks of the CPU lowrank_project kernel (and its float32 output GEMM).
// Matrices are row-major with their column count as leading dimension. All functions are safe to
// call from inside at::parallel_for (they run on the calling thread).
#pragma once

#include <cstdint>

namespace trp_ext {
namespace cpu {

// C (m x n) = op(A) op(B), op(X) = X^T when trans_x: small products through small_gemm.h, the
// others through BLAS (MKL/OpenBLAS). A is stored m x k (k x m when trans_a), B is stored k x n
// (n x k when trans_b).
void matmul(const double* a, bool trans_a, const double* b, bool trans_b, double* c, int64_t m,
            int64_t n, int64_t k);

// The same in float32, for the outputs of float32 inputs (projection and sub-gradient): BLAS's
// sgemm directly (ATen's dispatch, views and checks cost microseconds per call, as much as the
// products of a small layer), ATen's mm where the build does not export it.
void matmul(const float* a, bool trans_a, const float* b, bool trans_b, float* c, int64_t m,
            int64_t n, int64_t k);

// C = beta C + alpha op(A) op(B), shapes as for matmul.
void matmul_accumulate(const double* a, bool trans_a, const double* b, bool trans_b, double* c,
                       int64_t m, int64_t n, int64_t k, double alpha, double beta);

// G (k x k) = A A^T for the row-major A (k x len), both triangles, exactly symmetric: each pair
// of rows' dot product is computed once. Own vector kernel for rows of up to 1024 values or
// matrices of up to 2^18 values, BLAS beyond.
void gram(const double* a, int64_t k, int64_t len, double* g);
// The same from float32 rows, converted as they are read: float32 values and their products are
// exact in float64, so G is bitwise what a float64 copy of A gives, without writing that copy.
void gram(const float* a, int64_t k, int64_t len, double* g);

// Replaces the columns of q (rows x cols, rows >= cols) by an orthonormal basis of their span:
// Cholesky QR (level 3, and exact enough for the nearly orthonormal blocks of a converging
// subspace iteration), repeated while the pivots spread, and Householder QR through LAPACK when
// the columns are too close to dependent for it. Returns false only when the columns are
// numerically dependent even for Householder QR.
bool orthonormalize_columns(double* q, int64_t rows, int64_t cols);

// Full symmetric eigen-decomposition through LAPACK (ATen's linalg_eigh); a is not modified.
// values: n, descending; vectors: n x n, column j belongs to values[j].
void lapack_eigh(const double* a, int64_t n, double* values, double* vectors);

}  // namespace cpu
}  // namespace trp_ext
