// The float64 GEMM for the small products of the CPU lowrank_project kernel.
//
// The solver multiplies blocks of a few dozen to a few hundred rows by thin ones (G Q, Q^T G Q,
// the Rayleigh-Ritz rotations, Cholesky QR, the blocked back-transformation). On those, MKL's
// dgemm spends as long choosing and packing as multiplying: on one core of the development
// machine (FMA peak ~39 GFLOP/s in float64) it reached 13-26 GFLOP/s on 192 x 56 x 192,
// 56 x 56 x 192 and 192 x 56 x 56, this kernel 24-36. small_gemm runs factored_conv2d's
// register-blocked micro-kernel (tap_conv: 6 rows x 8 columns of C per block, ~90% of that
// peak) over op(B) laid out as rows of a multiple of 8 values.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace cpu {

// C (m x n, row-major, leading dimension n) = alpha op(A) op(B) + beta C, op(X) = X^T when
// trans_x; A is stored m x k (k x m when trans_a), B k x n (n x k when trans_b), both row-major
// with no padding. beta == 0 makes C write-only (NaN in it is not kept), as in BLAS.
void small_gemm(const double* a, bool trans_a, const double* b, bool trans_b, double* c,
                int64_t m, int64_t n, int64_t k, double alpha, double beta);

// Whether small_gemm should take a product of these sizes rather than BLAS: C of at most 64
// columns and a depth of at most 512 (the measured crossover), with the AVX2 kernels.
// TRP_EXT_OWN_GEMM=always|never overrides that (read once per process; the tests run the whole
// solver both ways); any other value than those and auto raises.
bool use_small_gemm(int64_t m, int64_t n, int64_t k);

}  // namespace cpu
}  // namespace trp_ext
