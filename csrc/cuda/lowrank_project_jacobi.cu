// Batched symmetric eigen-decomposition for lowrank_project: one block per matrix, cyclic Jacobi
// with a parallel round-robin ordering, A and V in shared memory (float64). Its CPU twin is
// cpu/lowrank_project_batched_twins.cpp; the pairing and the rotation rule are shared
// (common/jacobi_rotation.h).
//
// Each round pairs every index with another (the circle method: n-1 rounds meet every pair
// once per sweep); the n/2 rotations of a round touch disjoint rows and columns, so the block
// applies them all at once: rotations, then J^T A (rows), then A J and V J (columns), with a
// barrier between the phases. A sweep without a rotation above the Demmel-Veselic threshold
// ends the iteration.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>

#include "common/jacobi_eigh_checks.h"
#include "common/jacobi_rotation.h"
#include "cuda/dynamic_smem.cuh"
#include "cuda/lowrank_project_kernels.cuh"

namespace trp_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct JacobiLayout {
  int n, ld, padded, pairs;
  size_t bytes;
};

__host__ __device__ inline JacobiLayout jacobi_layout(int n) {
  JacobiLayout l;
  l.n = n;
  l.ld = n + 1;  // an odd leading dimension spreads a column over the shared-memory banks
  l.padded = n + (n & 1);  // an odd n gets a dummy index, whose rotations are the identity
  l.pairs = l.padded / 2;
  // Every shared variable of the kernel is here, the two scalars included: CUDA counts static
  // __shared__ variables against the same opt-in limit, which jacobi_eigh_fits compares with this.
  // (As static ones, uncounted, they let n = 63 pass on sm_75 at 12 bytes over its 64 KiB.)
  l.bytes = (2 * static_cast<size_t>(n) * l.ld + 2 * static_cast<size_t>(l.pairs) + 1) * sizeof(double) +
            (2 * static_cast<size_t>(l.pairs) + n + 1) * sizeof(int);
  return l;
}

__global__ void __launch_bounds__(kThreads)
    jacobi_eigh_kernel(const double* __restrict__ matrices, int n, double* __restrict__ values,
                       double* __restrict__ vectors, int* __restrict__ converged) {
  extern __shared__ double smem[];
  const JacobiLayout l = jacobi_layout(n);
  const int ld = l.ld;
  double* a = smem;                 // n x ld
  double* v = a + n * ld;           // n x ld
  double* cs = v + n * ld;          // pairs
  double* sn = cs + l.pairs;        // pairs
  double& floor_abs = sn[l.pairs];  // 1
  int* pp = reinterpret_cast<int*>(sn + l.pairs + 1);  // pairs
  int* qq = pp + l.pairs;           // pairs
  int* pos = qq + l.pairs;          // n: rank of each eigenvalue in descending order
  int& rotated = pos[n];            // 1

  const int64_t matrix = blockIdx.x;
  const double* g = matrices + matrix * n * n;
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx % n;
    a[i * ld + j] = g[idx];
    v[i * ld + j] = i == j ? 1.0 : 0.0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double dmax = 0.0;
    for (int i = 0; i < n; ++i) dmax = fmax(dmax, fabs(a[i * ld + i]));
    floor_abs = jacobi_floor(dmax, n);
  }
  __syncthreads();

  bool done = false;
  for (int sweep = 0; sweep < kJacobiMaxSweeps && !done; ++sweep) {
    if (threadIdx.x == 0) rotated = 0;
    __syncthreads();
    for (int round = 0; round < l.padded - 1; ++round) {
      for (int t = threadIdx.x; t < l.pairs; t += blockDim.x) {
        int p, q;
        jacobi_round_pair(round, t, l.padded, &p, &q);
        double c = 1.0, s = 0.0;
        if (q < n && jacobi_rotation(a[p * ld + p], a[q * ld + q], a[p * ld + q], floor_abs, &c, &s)) {
          rotated = 1;
        }
        pp[t] = p;
        qq[t] = q;
        cs[t] = c;
        sn[t] = s;
      }
      __syncthreads();
      // A <- J^T A: rows p and q of every pair.
      for (int idx = threadIdx.x; idx < l.pairs * n; idx += blockDim.x) {
        const int t = idx / n, j = idx % n;
        const double s = sn[t];
        if (s == 0.0) continue;
        const double c = cs[t];
        double* row_p = a + pp[t] * ld;
        double* row_q = a + qq[t] * ld;
        const double x = row_p[j], y = row_q[j];
        row_p[j] = c * x - s * y;
        row_q[j] = s * x + c * y;
      }
      __syncthreads();
      // A <- A J and V <- V J: columns p and q of every pair.
      for (int idx = threadIdx.x; idx < l.pairs * n; idx += blockDim.x) {
        const int t = idx / n, i = idx % n;
        const double s = sn[t];
        if (s == 0.0) continue;
        const double c = cs[t];
        const int p = pp[t], q = qq[t];
        const double x = a[i * ld + p], y = a[i * ld + q];
        a[i * ld + p] = c * x - s * y;
        a[i * ld + q] = s * x + c * y;
        const double vx = v[i * ld + p], vy = v[i * ld + q];
        v[i * ld + p] = c * vx - s * vy;
        v[i * ld + q] = s * vx + c * vy;
      }
      __syncthreads();
    }
    done = rotated == 0;  // every thread reads it after the round's last barrier
    __syncthreads();      // ... before thread 0 resets it for the next sweep
  }

  // Descending order: the position of value i is the number of values before it.
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = a[i * ld + i];
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      const double e = a[j * ld + j];
      rank += (e > d) || (e == d && j < i);
    }
    pos[i] = rank;
    values[matrix * n + rank] = d;
  }
  __syncthreads();
  double* out = vectors + matrix * n * n;
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int row = idx / n, i = idx % n;
    out[row * n + pos[i]] = v[row * ld + i];
  }
  if (threadIdx.x == 0) converged[matrix] = done ? 1 : 0;
}

}  // namespace

bool jacobi_eigh_fits(int64_t n) {
  if (n > kJacobiMaxSize) return false;
  const size_t bytes = jacobi_layout(static_cast<int>(n)).bytes;
  return bytes <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

void jacobi_eigh(const at::Tensor& matrices, const at::Tensor& values, const at::Tensor& vectors,
                 const at::Tensor& converged) {
  TORCH_CHECK(matrices.dim() == 3 && matrices.size(1) == matrices.size(2) &&
                  matrices.scalar_type() == at::kDouble && matrices.is_contiguous(),
              "jacobi_eigh: expected contiguous float64 (B, n, n) matrices");
  const int64_t batch = matrices.size(0);
  const int n = static_cast<int>(matrices.size(1));
  TORCH_CHECK(values.is_contiguous() && vectors.is_contiguous() && converged.is_contiguous() &&
                  values.numel() == batch * n && vectors.numel() == batch * n * n &&
                  converged.numel() == batch && converged.scalar_type() == at::kInt,
              "jacobi_eigh: output tensors of the wrong shape or layout");
  TORCH_CHECK(jacobi_eigh_fits(n), "jacobi_eigh: n = ", n, " does not fit in shared memory");
  TORCH_CHECK(batch <= 2147483647LL, "jacobi_eigh: too many matrices for one launch");
  if (batch == 0 || n == 0) return;
  const size_t bytes = jacobi_layout(n).bytes;
  cuda_util::allow_dynamic_smem(reinterpret_cast<const void*>(jacobi_eigh_kernel), bytes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  jacobi_eigh_kernel<<<static_cast<unsigned>(batch), kThreads, bytes, stream>>>(
      matrices.const_data_ptr<double>(), n, values.data_ptr<double>(), vectors.data_ptr<double>(),
      converged.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> jacobi_eigh_cuda(const at::Tensor& matrices) {
  check_jacobi_eigh_args(matrices);
  const c10::cuda::CUDAGuard device_guard(matrices.device());
  const at::Tensor input = matrices.contiguous();
  const int64_t batch = input.size(0), n = input.size(1);
  TRP_CHECK_ARG(cuda::jacobi_eigh_fits(n), "_jacobi_eigh", "matrices", "holds ", n, " x ", n,
                " matrices, past what this GPU's shared memory takes");
  at::Tensor values = at::empty({batch, n}, input.options());
  at::Tensor vectors = at::empty({batch, n, n}, input.options());
  at::Tensor converged = at::empty({batch}, input.options().dtype(at::kInt));
  cuda::jacobi_eigh(input, values, vectors, converged);
  return {values, vectors, converged.ne(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp_ext, CUDA, m) { m.impl("_jacobi_eigh", &jacobi_eigh_cuda); }

}  // namespace trp_ext
