// cuSOLVER's batched symmetric eigensolver (cusolverDnXsyevBatched, cuSOLVER 11.7.1 / CUDA 12.6
// and later) for the matrices past the Jacobi kernel's reach. torch.linalg.eigh takes it only
// up to n = 32; past that it solves a batch one matrix at a time (syevd), with its own workspace
// queries and host synchronisations per matrix: 17 Gram matrices of 192 x 192 cost the
// projection 1,403 device operations and 21 host syncs on the H200 (bench/RESULTS.md).
//
// The API is looked up at run time in the cuSOLVER library torch has loaded, so the extension
// links no cuSOLVER of its own, and builds and loads where the header, the library or the symbol
// is older; the caller then falls back to at::linalg_eigh.
#pragma once

#include <ATen/ATen.h>

namespace trp_ext {
namespace cuda {

// Whether cusolverDnXsyevBatched and the calls around it were found in a loaded cuSOLVER.
bool cusolver_batched_eigh_available();

// The calls of cusolver_batched_eigh that solved their batch so far (process-wide).
int64_t cusolver_batched_eigh_calls();

// Eigen-decomposition of a batch of symmetric n x n float64 matrices `sym` (B, n, n) on the
// current device and stream, one cuSOLVER call for the batch: `values` (B, n) ascending,
// `vectors` (B, n, n) with column j belonging to values[:, j], `info` (B) int32 (0: converged).
// No host synchronisation. Returns false, writing nothing, where the API is not available or
// refuses the problem; the caller then solves it another way.
bool cusolver_batched_eigh(const at::Tensor& sym, at::Tensor& values, at::Tensor& vectors,
                           at::Tensor& info);

}  // namespace cuda
}  // namespace trp_ext
