// Cholesky QR of a batch of k x b float64 blocks (common/cholesky_qr.h), one block of threads per
// matrix, in one launch where ATen's composition took ~19 (two bmm, Cholesky and triangular
// solves, the flags and the orthonormality check). S = X^T X and its factor live in shared memory;
// X is updated in place in the output. Its CPU twin is in cpu/lowrank_project_batched_twins.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/batch_tensor_checks.h"
#include "common/cholesky_qr.h"
#include "cuda/block_reduce.cuh"
#include "cuda/dynamic_smem.cuh"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

size_t qr_smem_bytes(int64_t b) { return static_cast<size_t>(b) * b * sizeof(double); }
// The kernel's static shared memory (`failed` and `flag_scratch`: 36 bytes, 48 aligned as ptxas
// reports them), which counts against the same opt-in limit as the dynamic block.
constexpr size_t kStaticSmemBound = 64;
static_assert(sizeof(int) * (1 + kWarps) <= kStaticSmemBound, "static shared memory bound");

// s (b x b) <- X^T X, both triangles, from the k x b row-major block x.
__device__ void columns_gram(const double* x, int64_t k, int64_t b, double* s) {
  for (int64_t idx = threadIdx.x; idx < b * b; idx += kThreads) {
    const int64_t i = idx / b, j = idx % b;
    if (i > j) continue;
    double sum = 0.0;
    for (int64_t r = 0; r < k; ++r) sum += x[r * b + i] * x[r * b + j];
    s[i * b + j] = sum;
    s[j * b + i] = sum;
  }
  __syncthreads();
}

// Right-looking Cholesky of s in place (its lower triangle becomes L). Returns false, uniformly
// across the block, when a pivot is not positive (or NaN): LAPACK's potrf failure.
__device__ bool factor_in_place(double* s, int64_t b, int* failed) {
  for (int64_t j = 0; j < b; ++j) {
    if (threadIdx.x == 0) {
      const double d = s[j * b + j];
      *failed = !(d > 0.0);
      if (!*failed) s[j * b + j] = sqrt(d);
    }
    __syncthreads();
    if (*failed) return false;  // the same shared value for every thread
    const double pivot = s[j * b + j];
    for (int64_t i = j + 1 + threadIdx.x; i < b; i += kThreads) s[i * b + j] /= pivot;
    __syncthreads();
    const int64_t m = b - j - 1;
    for (int64_t idx = threadIdx.x; idx < m * m; idx += kThreads) {
      const int64_t i = j + 1 + idx / m, l = j + 1 + idx % m;
      if (l <= i) s[i * b + l] -= s[i * b + j] * s[l * b + j];
    }
    __syncthreads();  // also keeps thread 0 from reading the next pivot before the update ends
  }
  return true;
}

__global__ void __launch_bounds__(kThreads)
    cholesky_qr_kernel(const double* __restrict__ q, const double* __restrict__ previous, int64_t k,
                       int64_t b, double* __restrict__ out, bool* __restrict__ ok) {
  extern __shared__ double s[];  // b x b
  __shared__ int failed;
  __shared__ int flag_scratch[kWarps];
  const int64_t matrix = blockIdx.x;
  const double* src = q + matrix * k * b;
  double* x = out + matrix * k * b;
  if (previous == nullptr) {
    for (int64_t idx = threadIdx.x; idx < k * b; idx += kThreads) x[idx] = src[idx];
  } else {  // a power step's normalisation: column norms into s (free until columns_gram)
    const double* prev = previous + matrix * k * b;
    for (int64_t c = threadIdx.x; c < b; c += kThreads) {
      double sum = 0.0;
      for (int64_t r = 0; r < k; ++r) sum += src[r * b + c] * src[r * b + c];
      s[c] = sqrt(sum);
    }
    __syncthreads();
    const double largest = largest_norm(s, b);
    for (int64_t idx = threadIdx.x; idx < k * b; idx += kThreads) {
      x[idx] = normalised_entry(src[idx], prev[idx], s[idx % b], largest);
    }
  }
  __syncthreads();
  bool good = true;
  for (int pass = 0; pass < kCholeskyQrPasses; ++pass) {
    columns_gram(x, k, b, s);
    if (!factor_in_place(s, b, &failed)) {
      good = false;  // L = I: X stays as it is
      continue;
    }
    for (int64_t r = threadIdx.x; r < k; r += kThreads) solve_row_with_factor(s, b, b, x + r * b);
    __syncthreads();
  }
  columns_gram(x, k, b, s);
  bool orthonormal = true;  // NaN compares false: not orthonormal
  for (int64_t idx = threadIdx.x; idx < b * b; idx += kThreads) {
    const double target = idx / b == idx % b ? 1.0 : 0.0;
    orthonormal = orthonormal && fabs(s[idx] - target) <= kOrthonormalTol;
  }
  orthonormal = cuda_util::block_all<kWarps>(orthonormal, flag_scratch);
  if (threadIdx.x == 0) ok[matrix] = ok[matrix] && good && orthonormal;
}

}  // namespace

bool cholesky_qr_fits(int64_t b) {
  if (b > kCholeskyQrMaxWidth) return false;
  return qr_smem_bytes(b) + kStaticSmemBound <=
         at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

void cholesky_qr(const at::Tensor& q, const at::Tensor& previous, const at::Tensor& out,
                 const at::Tensor& ok) {
  check_cholesky_qr_args(q, previous, out, ok, c10::DeviceType::CUDA);
  const int64_t batch = q.size(0), k = q.size(1), b = q.size(2);
  TORCH_CHECK(cholesky_qr_fits(b), "cholesky_qr: width ", b, " does not fit in shared memory");
  TORCH_CHECK(batch <= 2147483647LL, "cholesky_qr: too many matrices for one launch");
  if (batch == 0 || b == 0) return;
  const size_t bytes = qr_smem_bytes(b);
  cuda_util::allow_dynamic_smem(reinterpret_cast<const void*>(cholesky_qr_kernel), bytes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cholesky_qr_kernel<<<static_cast<unsigned>(batch), kThreads, bytes, stream>>>(
      q.const_data_ptr<double>(), previous.defined() ? previous.const_data_ptr<double>() : nullptr,
      k, b, out.data_ptr<double>(), ok.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace trp_ext
