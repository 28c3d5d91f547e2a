// The warm starts' first step on the GPU (common/batched_bases.h): one block per matrix of every
// warm-started group. The block checks the given basis for NaN and Inf, then writes the
// matrix's starting block Q: the basis and pseudo-random padding columns, or pseudo-random
// columns only where the matrix cannot warm-start. Its CPU twin is in
// cpu/lowrank_project_batched_twins.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/batch_tensor_checks.h"
#include "common/batched_bases.h"
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
    load_bases_kernel(const BasisJob* __restrict__ jobs, int32_t* __restrict__ flags,
                      int64_t flag_count, bool* __restrict__ ok) {
  __shared__ int flag_scratch[kWarps];
  const BasisJob job = jobs[blockIdx.x];
  const T* src = reinterpret_cast<const T*>(job.src);
  double* q = reinterpret_cast<double*>(job.dst);
  bool finite = true;
  for (int64_t idx = threadIdx.x; idx < job.k * job.width; idx += kThreads) {
    const int64_t i = idx / job.width, c = idx % job.width;
    finite = finite && isfinite(static_cast<double>(src[i * job.row_stride + c * job.col_stride]));
  }
  finite = cuda_util::block_all<kWarps>(finite, flag_scratch);
  const bool bad = flags[kFlagBad * flag_count + job.flag_row] != 0;
  const bool usable = job.width > 0 && !bad && finite;
  for (int64_t idx = threadIdx.x; idx < job.k * job.b; idx += kThreads) {
    const int64_t i = idx / job.b, c = idx % job.b;
    q[idx] = usable && c < job.width ? static_cast<double>(src[i * job.row_stride + c * job.col_stride])
                                     : pseudo_random_entry(job.noise_offset + idx);
  }
  if (threadIdx.x == 0) {
    flags[kFlagBadBasis * flag_count + job.flag_row] = finite ? 0 : 1;
    ok[job.ok_index] = usable;
  }
}

}  // namespace

void load_bases(const at::Tensor& jobs, bool from_double, const at::Tensor& flags,
                const at::Tensor& ok) {
  check_basis_jobs(jobs, flags, ok, c10::DeviceType::CUDA);
  const int64_t count = jobs.size(0);
  TORCH_CHECK(count <= 2147483647LL, "load_bases: too many matrices for one launch");
  if (count == 0) return;
  const BasisJob* job = reinterpret_cast<const BasisJob*>(jobs.const_data_ptr<int64_t>());
  const int64_t flag_count = flags.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(count));
  if (from_double) {
    load_bases_kernel<double><<<grid, kThreads, 0, stream>>>(job, flags.data_ptr<int32_t>(), flag_count,
                                                              ok.data_ptr<bool>());
  } else {
    load_bases_kernel<float><<<grid, kThreads, 0, stream>>>(job, flags.data_ptr<int32_t>(), flag_count,
                                                             ok.data_ptr<bool>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace trp_ext
