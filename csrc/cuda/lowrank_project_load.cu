// The load step of the batched lowrank_project on the GPU (common/batched_load.h): one block per
// matrix of the call, whatever its group. The block finds the matrix's largest magnitude and
// whether it is finite, then writes it rescaled into its group's batch and sums its squares;
// a second kernel symmetrises the Gram matrices the groups' bmm made. Their CPU twins are in
// cpu/lowrank_project_batched_twins.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cfloat>

#include "common/batch_tensor_checks.h"
#include "common/batched_load.h"
#include "cuda/block_reduce.cuh"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    load_kernel(const LoadJob* __restrict__ jobs, int64_t count, double value_threshold,
                double* __restrict__ stats, int32_t* __restrict__ flags) {
  __shared__ double scratch[kWarps];
  __shared__ int flag_scratch[kWarps];
  const LoadJob job = jobs[blockIdx.x];
  const T* src = reinterpret_cast<const T*>(job.src);
  double* dst = reinterpret_cast<double*>(job.dst);
  const int64_t size = job.k * job.len;
  double largest = 0.0;
  bool finite = true;
  for (int64_t idx = threadIdx.x; idx < size; idx += kThreads) {
    const int64_t i = idx / job.len, l = idx % job.len;
    const double v = static_cast<double>(src[i * job.row_stride + l * job.col_stride]);
    finite = finite && isfinite(v);
    largest = fmax(largest, fabs(v));
  }
  finite = cuda_util::block_all<kWarps>(finite, flag_scratch);
  largest = cuda_util::block_max<kWarps>(largest, scratch);
  double scale_lo = 1.0, scale_hi = 1.0;
  if (finite) rescale_factors(largest, &scale_lo, &scale_hi);
  const int64_t padded = job.k * job.padded_len;
  double squares = 0.0;
  for (int64_t idx = threadIdx.x; idx < padded; idx += kThreads) {
    const int64_t i = idx / job.padded_len, l = idx % job.padded_len;
    double v = 0.0;
    if (finite && l < job.len) {
      // By powers of two, one factor at a time, as the CPU twin.
      v = (static_cast<double>(src[i * job.row_stride + l * job.col_stride]) * scale_lo) * scale_hi;
    }
    dst[idx] = v;
    squares += v * v;
  }
  const double total = cuda_util::block_sum<kWarps>(squares, scratch);
  if (threadIdx.x == 0) {
    write_load_stats(job, stats, count, value_threshold, scale_lo, scale_hi, total);
    write_load_flags(job.row, flags, count, finite, total);
  }
}

__global__ void __launch_bounds__(kThreads)
    finish_grams_kernel(const LoadJob* __restrict__ jobs, double* __restrict__ gram_fro2) {
  __shared__ double scratch[kWarps];
  const LoadJob job = jobs[blockIdx.x];
  double* g = reinterpret_cast<double*>(job.gram);
  const int64_t k = job.k;
  double squares = 0.0;
  // Each unordered pair {i, j} by the one thread that meets it with i <= j: it reads and writes
  // both entries, so no other thread touches them.
  for (int64_t idx = threadIdx.x; idx < k * k; idx += kThreads) {
    const int64_t i = idx / k, j = idx % k;
    if (i > j) continue;
    if (i == j) {
      squares += g[idx] * g[idx];
      continue;
    }
    const double v = symmetric_entry(g[i * k + j], g[j * k + i]);
    g[i * k + j] = v;
    g[j * k + i] = v;
    squares += 2.0 * v * v;
  }
  const double total = cuda_util::block_sum<kWarps>(squares, scratch);
  if (threadIdx.x == 0) gram_fro2[job.row] = total;
}

const LoadJob* device_jobs(const at::Tensor& jobs) {
  check_load_jobs(jobs, c10::DeviceType::CUDA);
  TORCH_CHECK(jobs.size(0) <= 2147483647LL, "load_matrices: too many matrices for one launch");
  return reinterpret_cast<const LoadJob*>(jobs.const_data_ptr<int64_t>());
}

}  // namespace

void load_matrices(const at::Tensor& jobs, bool from_double, double value_threshold,
                   const at::Tensor& stats, const at::Tensor& flags) {
  const LoadJob* job = device_jobs(jobs);
  const int64_t count = jobs.size(0);
  check_load_outputs(stats, flags, count, c10::DeviceType::CUDA);
  if (count == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(count));
  if (from_double) {
    load_kernel<double><<<grid, kThreads, 0, stream>>>(job, count, value_threshold,
                                                        stats.data_ptr<double>(), flags.data_ptr<int32_t>());
  } else {
    load_kernel<float><<<grid, kThreads, 0, stream>>>(job, count, value_threshold,
                                                       stats.data_ptr<double>(), flags.data_ptr<int32_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void finish_grams(const at::Tensor& jobs, const at::Tensor& gram_fro2) {
  const LoadJob* job = device_jobs(jobs);
  const int64_t count = jobs.size(0);
  check_gram_norms(gram_fro2, count, c10::DeviceType::CUDA);
  if (count == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  finish_grams_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(
      job, gram_fro2.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace trp_ext
