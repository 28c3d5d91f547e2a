// The per-matrix rules of batched results, one thread per matrix running the CPU kernel's own
// code: certify_ritz (common/ritz_certificate.h), so both devices accept a warm result under
// exactly the same bounds, and gap_basis_width (common/lowrank_project_policy.h), so both return
// bases of the same widths.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/lowrank_project_policy.h"
#include "common/ritz_certificate.h"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 128;

struct RitzArgs {
  int64_t count, k, b;
  const double *theta, *res2, *gram_fro2, *total, *value_cut2, *sub_floor2;
  const int64_t* energy_rank;
  const bool* usable;
  int64_t max_rank;
  bool want_subgradient;
  double tol_rank, tol_proj, tol_sub;
};

__global__ void certify_kernel(RitzArgs args, int64_t* __restrict__ rank_out,
                               int* __restrict__ status_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= args.count) return;
  if (!args.usable[i]) {
    rank_out[i] = 0;
    status_out[i] = kRitzNeedCold;
    return;
  }
  RitzProblem p;
  p.k = args.k;
  p.b = args.b;
  p.theta = args.theta + i * args.b;
  p.res2 = args.res2 + i * args.b;
  p.gram_fro2 = args.gram_fro2[i];
  p.total = args.total[i];
  p.energy_rank = args.energy_rank[i];
  p.value_cut2 = args.value_cut2[i];
  p.max_rank = args.max_rank;
  p.want_subgradient = args.want_subgradient;
  p.sub_floor2 = args.sub_floor2[i];
  p.tol_rank = args.tol_rank;
  p.tol_proj = args.tol_proj;
  p.tol_sub = args.tol_sub;
  const RitzCertificate certificate = certify_ritz(p);
  rank_out[i] = certificate.rank;
  status_out[i] = certificate.status;
}

__global__ void gap_width_kernel(int64_t count, int64_t w, int64_t k, const double* __restrict__ values,
                                 const int64_t* __restrict__ rank, int64_t* __restrict__ width_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  width_out[i] = gap_basis_width(values + i * w, w, rank[i], k);
}

void check_batch_tensor(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name,
                        const char* caller = "certify_ritz_batch") {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == dtype && t.numel() == numel,
              caller, ": '", name, "' must be a contiguous CUDA ", dtype, " tensor of ", numel,
              " elements");
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

}  // namespace

void certify_ritz_batch(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status) {
  const int64_t count = batch.theta.size(0);
  const int64_t b = batch.b;
  check_batch_tensor(batch.theta, at::kDouble, count * b, "theta");
  check_batch_tensor(batch.res2, at::kDouble, count * b, "res2");
  check_batch_tensor(batch.gram_fro2, at::kDouble, count, "gram_fro2");
  check_batch_tensor(batch.total, at::kDouble, count, "total");
  check_batch_tensor(batch.value_cut2, at::kDouble, count, "value_cut2");
  check_batch_tensor(batch.sub_floor2, at::kDouble, count, "sub_floor2");
  check_batch_tensor(batch.energy_rank, at::kLong, count, "energy_rank");
  check_batch_tensor(batch.usable, at::kBool, count, "usable");
  check_batch_tensor(rank, at::kLong, count, "rank");
  check_batch_tensor(status, at::kInt, count, "status");
  if (count == 0) return;
  RitzArgs args{count,
                batch.k,
                b,
                batch.theta.const_data_ptr<double>(),
                batch.res2.const_data_ptr<double>(),
                batch.gram_fro2.const_data_ptr<double>(),
                batch.total.const_data_ptr<double>(),
                batch.value_cut2.const_data_ptr<double>(),
                batch.sub_floor2.const_data_ptr<double>(),
                batch.energy_rank.const_data_ptr<int64_t>(),
                batch.usable.const_data_ptr<bool>(),
                batch.max_rank,
                batch.want_subgradient,
                batch.tol_rank,
                batch.tol_proj,
                batch.tol_sub};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  certify_kernel<<<blocks_for(count), kThreads, 0, stream>>>(args, rank.data_ptr<int64_t>(),
                                                             status.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gap_basis_widths(const at::Tensor& values, const at::Tensor& rank, int64_t k) {
  TORCH_CHECK(values.dim() == 2, "gap_basis_widths: 'values' must be (B, w)");
  const int64_t count = values.size(0), w = values.size(1);
  check_batch_tensor(values, at::kDouble, count * w, "values", "gap_basis_widths");
  check_batch_tensor(rank, at::kLong, count, "rank", "gap_basis_widths");
  at::Tensor width = at::empty({count}, rank.options());
  if (count == 0) return width;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  gap_width_kernel<<<blocks_for(count), kThreads, 0, stream>>>(
      count, w, k, values.const_data_ptr<double>(), rank.const_data_ptr<int64_t>(),
      width.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return width;
}

}  // namespace cuda
}  // namespace trp_ext
