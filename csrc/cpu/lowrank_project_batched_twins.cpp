// CPU twins of the CUDA lowrank_project's kernels. The Jacobi twin runs the CUDA kernel's
// rounds in the same order (a round's rotations all computed from the matrix as the round found
// it, then applied to rows, then to columns: they touch disjoint rows and columns, so one after
// another gives what the block's threads give at once); the certificate and the basis widths
// run the very per-matrix code of the CUDA threads.
#include "cpu/lowrank_project_batched_twins.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/batch_tensor_checks.h"
#include "common/batched_bases.h"
#include "common/batched_load.h"
#include "common/batched_outputs.h"
#include "common/ritz_residuals.h"
#include "common/cholesky_qr.h"
#include "common/jacobi_eigh_checks.h"
#include "common/jacobi_rotation.h"
#include "common/ritz_batch.h"

namespace trp_ext {
namespace cpu {
namespace {

// One symmetric n x n matrix g (row-major): values descending, vectors column j for value j.
void jacobi_one(const double* g, int n, double* values, double* vectors, int* converged) {
  std::vector<double> a(g, g + static_cast<size_t>(n) * n), v(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) v[i * n + i] = 1.0;
  const int padded = n + (n & 1), pairs = padded / 2;
  double dmax = 0.0;
  for (int i = 0; i < n; ++i) dmax = std::fmax(dmax, std::fabs(a[i * n + i]));
  const double floor_abs = jacobi_floor(dmax, n);
  std::vector<int> pp(pairs), qq(pairs);
  std::vector<double> cs(pairs), sn(pairs);
  bool done = false;
  for (int sweep = 0; sweep < kJacobiMaxSweeps && !done; ++sweep) {
    bool rotated = false;
    for (int round = 0; round < padded - 1; ++round) {
      for (int t = 0; t < pairs; ++t) {
        int p, q;
        jacobi_round_pair(round, t, padded, &p, &q);
        double c = 1.0, s = 0.0;
        if (q < n && jacobi_rotation(a[p * n + p], a[q * n + q], a[p * n + q], floor_abs, &c, &s)) {
          rotated = true;
        }
        pp[t] = p;
        qq[t] = q;
        cs[t] = c;
        sn[t] = s;
      }
      for (int t = 0; t < pairs; ++t) {  // A <- J^T A: rows p and q
        const double c = cs[t], s = sn[t];
        if (s == 0.0) continue;
        double* row_p = &a[pp[t] * n];
        double* row_q = &a[qq[t] * n];
        for (int j = 0; j < n; ++j) {
          const double x = row_p[j], y = row_q[j];
          row_p[j] = c * x - s * y;
          row_q[j] = s * x + c * y;
        }
      }
      for (int t = 0; t < pairs; ++t) {  // A <- A J and V <- V J: columns p and q
        const double c = cs[t], s = sn[t];
        if (s == 0.0) continue;
        const int p = pp[t], q = qq[t];
        for (int i = 0; i < n; ++i) {
          const double x = a[i * n + p], y = a[i * n + q];
          a[i * n + p] = c * x - s * y;
          a[i * n + q] = s * x + c * y;
          const double vx = v[i * n + p], vy = v[i * n + q];
          v[i * n + p] = c * vx - s * vy;
          v[i * n + q] = s * vx + c * vy;
        }
      }
    }
    done = !rotated;
  }
  // Descending order, as the kernel sorts: the position of value i is the count of values before it.
  std::vector<int> pos(n);
  for (int i = 0; i < n; ++i) {
    const double d = a[i * n + i];
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      const double e = a[j * n + j];
      rank += (e > d) || (e == d && j < i);
    }
    pos[i] = rank;
    values[rank] = d;
  }
  for (int row = 0; row < n; ++row) {
    for (int i = 0; i < n; ++i) vectors[row * n + pos[i]] = v[row * n + i];
  }
  *converged = done ? 1 : 0;
}

bool jacobi_eigh_fits_twin(int64_t n) { return n <= kJacobiMaxSize; }

template <typename T>
void load_basis_one(const BasisJob& job, int32_t* flags, int64_t flag_count, bool* ok) {
  const T* src = reinterpret_cast<const T*>(job.src);
  double* q = reinterpret_cast<double*>(job.dst);
  bool finite = true;
  for (int64_t i = 0; i < job.k; ++i) {
    for (int64_t c = 0; c < job.width; ++c) {
      finite = finite && std::isfinite(static_cast<double>(src[i * job.row_stride + c * job.col_stride]));
    }
  }
  const bool bad = flags[kFlagBad * flag_count + job.flag_row] != 0;
  const bool usable = job.width > 0 && !bad && finite;
  for (int64_t i = 0; i < job.k; ++i) {
    for (int64_t c = 0; c < job.b; ++c) {
      const int64_t idx = i * job.b + c;
      q[idx] = usable && c < job.width ? static_cast<double>(src[i * job.row_stride + c * job.col_stride])
                                       : pseudo_random_entry(job.noise_offset + idx);
    }
  }
  flags[kFlagBadBasis * flag_count + job.flag_row] = finite ? 0 : 1;
  ok[job.ok_index] = usable;
}

void load_bases_twin(const at::Tensor& jobs, bool from_double, const at::Tensor& flags,
                     const at::Tensor& ok) {
  check_basis_jobs(jobs, flags, ok, c10::DeviceType::CPU);
  const BasisJob* job = reinterpret_cast<const BasisJob*>(jobs.const_data_ptr<int64_t>());
  const int64_t flag_count = flags.size(1);
  int32_t* flag = flags.data_ptr<int32_t>();
  bool* usable = ok.data_ptr<bool>();
  at::parallel_for(0, jobs.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (from_double) {
        load_basis_one<double>(job[t], flag, flag_count, usable);
      } else {
        load_basis_one<float>(job[t], flag, flag_count, usable);
      }
    }
  });
}

template <typename T>
void write_output_one(const OutputJob& job) {
  const double* src = reinterpret_cast<const double*>(job.src);
  T* dst = reinterpret_cast<T*>(job.dst);
  for (int64_t r = 0; r < job.rows; ++r) {
    for (int64_t c = 0; c < job.cols; ++c) {
      dst[r * job.cols + c] = static_cast<T>(src[r * job.row_stride + c * job.col_stride]);
    }
  }
}

void write_outputs_twin(const at::Tensor& jobs, bool to_double, int64_t /*largest*/) {
  check_output_jobs(jobs, c10::DeviceType::CPU);
  const OutputJob* job = reinterpret_cast<const OutputJob*>(jobs.const_data_ptr<int64_t>());
  at::parallel_for(0, jobs.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (to_double) {
        write_output_one<double>(job[t]);
      } else {
        write_output_one<float>(job[t]);
      }
    }
  });
}

void symmetrize_ritz_matrices_twin(const at::Tensor& h, const at::Tensor& usable) {
  check_ritz_matrices(h, usable, c10::DeviceType::CPU);
  const int64_t batch = h.size(0), b = h.size(1);
  double* hm = h.data_ptr<double>();
  const bool* on = usable.const_data_ptr<bool>();
  for (int64_t m = 0; m < batch; ++m) {
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t j = i; j < b; ++j) symmetrize_entry(hm + m * b * b, b, i, j, on[m]);
    }
  }
}

void ritz_residuals_twin(const at::Tensor& gu, const at::Tensor& u, const at::Tensor& theta,
                         const at::Tensor& total, const at::Tensor& res2, const at::Tensor& rows) {
  check_ritz_residuals(gu, u, theta, total, res2, rows, c10::DeviceType::CPU);
  const int64_t batch = gu.size(0), k = gu.size(1), b = gu.size(2);
  const double *g = gu.const_data_ptr<double>(), *v = u.const_data_ptr<double>();
  const double *t = theta.const_data_ptr<double>(), *tot = total.const_data_ptr<double>();
  double *r2 = res2.data_ptr<double>(), *row = rows.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t c = 0; c < b; ++c) r2[m * b + c] = ritz_residual2(g + m * k * b, v + m * k * b, t + m * b, k, b, c);
      ritz_rank_row(t + m * b, b, k, tot[m], row + m * (b + 1));
    }
  });
}

bool cholesky_qr_fits_twin(int64_t b) { return b <= kCholeskyQrMaxWidth; }

// s (b x b) <- X^T X, both triangles, as the kernel's threads sum them (rows in order).
void columns_gram(const double* x, int64_t k, int64_t b, double* s) {
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = i; j < b; ++j) {
      double sum = 0.0;
      for (int64_t r = 0; r < k; ++r) sum += x[r * b + i] * x[r * b + j];
      s[i * b + j] = sum;
      s[j * b + i] = sum;
    }
  }
}

// The kernel's right-looking Cholesky in place; false where a pivot is not positive (or NaN).
bool factor_in_place(double* s, int64_t b) {
  for (int64_t j = 0; j < b; ++j) {
    const double d = s[j * b + j];
    if (!(d > 0.0)) return false;
    const double pivot = std::sqrt(d);
    s[j * b + j] = pivot;
    for (int64_t i = j + 1; i < b; ++i) s[i * b + j] /= pivot;
    for (int64_t i = j + 1; i < b; ++i) {
      for (int64_t l = j + 1; l <= i; ++l) s[i * b + l] -= s[i * b + j] * s[l * b + j];
    }
  }
  return true;
}

void cholesky_qr_one(const double* q, const double* previous, int64_t k, int64_t b, double* x,
                     bool* ok) {
  std::vector<double> s(b * b);
  if (previous == nullptr) {
    std::copy(q, q + k * b, x);
  } else {  // a power step's normalisation, as the kernel does it
    for (int64_t c = 0; c < b; ++c) {
      double sum = 0.0;
      for (int64_t r = 0; r < k; ++r) sum += q[r * b + c] * q[r * b + c];
      s[c] = std::sqrt(sum);
    }
    const double largest = largest_norm(s.data(), b);
    for (int64_t idx = 0; idx < k * b; ++idx) {
      x[idx] = normalised_entry(q[idx], previous[idx], s[idx % b], largest);
    }
  }
  bool good = true;
  for (int pass = 0; pass < kCholeskyQrPasses; ++pass) {
    columns_gram(x, k, b, s.data());
    if (!factor_in_place(s.data(), b)) {
      good = false;  // L = I: X stays as it is
      continue;
    }
    for (int64_t r = 0; r < k; ++r) solve_row_with_factor(s.data(), b, b, x + r * b);
  }
  columns_gram(x, k, b, s.data());
  bool orthonormal = true;  // NaN compares false: not orthonormal
  for (int64_t idx = 0; idx < b * b; ++idx) {
    const double target = idx / b == idx % b ? 1.0 : 0.0;
    orthonormal = orthonormal && std::fabs(s[idx] - target) <= kOrthonormalTol;
  }
  *ok = *ok && good && orthonormal;
}

void cholesky_qr_twin(const at::Tensor& q, const at::Tensor& previous, const at::Tensor& out,
                      const at::Tensor& ok) {
  check_cholesky_qr_args(q, previous, out, ok, c10::DeviceType::CPU);
  const int64_t batch = q.size(0), k = q.size(1), b = q.size(2);
  const double* prev = previous.defined() ? previous.const_data_ptr<double>() : nullptr;
  TORCH_CHECK(cholesky_qr_fits_twin(b), "cholesky_qr: width ", b, " is past ", kCholeskyQrMaxWidth);
  const double* in = q.const_data_ptr<double>();
  double* x = out.data_ptr<double>();
  bool* flags = ok.data_ptr<bool>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      cholesky_qr_one(in + m * k * b, prev == nullptr ? nullptr : prev + m * k * b, k, b, x + m * k * b,
                      flags + m);
    }
  });
}

// The jobs table as LoadJobs, checked as the CUDA launchers check it.
const LoadJob* load_jobs(const at::Tensor& jobs, c10::DeviceType device) {
  check_load_jobs(jobs, device);
  return reinterpret_cast<const LoadJob*>(jobs.const_data_ptr<int64_t>());
}

template <typename T>
void load_one(const LoadJob& job, double value_threshold, double* stats, int32_t* flags, int64_t count) {
  const T* src = reinterpret_cast<const T*>(job.src);
  double* dst = reinterpret_cast<double*>(job.dst);
  double max_abs = 0.0;
  bool finite = true;
  for (int64_t i = 0; i < job.k; ++i) {
    for (int64_t l = 0; l < job.len; ++l) {
      const double v = static_cast<double>(src[i * job.row_stride + l * job.col_stride]);
      finite = finite && std::isfinite(v);
      max_abs = std::fmax(max_abs, std::fabs(v));
    }
  }
  double scale_lo = 1.0, scale_hi = 1.0, total = 0.0;
  if (finite) rescale_factors(max_abs, &scale_lo, &scale_hi);
  for (int64_t i = 0; i < job.k; ++i) {
    for (int64_t l = 0; l < job.padded_len; ++l) {
      double v = 0.0;
      if (finite && l < job.len) {
        v = (static_cast<double>(src[i * job.row_stride + l * job.col_stride]) * scale_lo) * scale_hi;
      }
      dst[i * job.padded_len + l] = v;
      total += v * v;
    }
  }
  write_load_stats(job, stats, count, value_threshold, scale_lo, scale_hi, total);
  write_load_flags(job.row, flags, count, finite, total);
}

void load_matrices_twin(const at::Tensor& jobs, bool from_double, double value_threshold,
                        const at::Tensor& stats, const at::Tensor& flags) {
  const LoadJob* job = load_jobs(jobs, c10::DeviceType::CPU);
  const int64_t count = jobs.size(0);
  check_load_outputs(stats, flags, count, c10::DeviceType::CPU);
  double* stat = stats.data_ptr<double>();
  int32_t* flag = flags.data_ptr<int32_t>();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (from_double) {
        load_one<double>(job[t], value_threshold, stat, flag, count);
      } else {
        load_one<float>(job[t], value_threshold, stat, flag, count);
      }
    }
  });
}

void finish_grams_twin(const at::Tensor& jobs, const at::Tensor& gram_fro2) {
  const LoadJob* job = load_jobs(jobs, c10::DeviceType::CPU);
  const int64_t count = jobs.size(0);
  check_gram_norms(gram_fro2, count, c10::DeviceType::CPU);
  double* fro2 = gram_fro2.data_ptr<double>();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      double* g = reinterpret_cast<double*>(job[t].gram);
      const int64_t k = job[t].k;
      double sum = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        sum += g[i * k + i] * g[i * k + i];
        for (int64_t j = i + 1; j < k; ++j) {
          const double v = symmetric_entry(g[i * k + j], g[j * k + i]);
          g[i * k + j] = v;
          g[j * k + i] = v;
          sum += 2.0 * v * v;
        }
      }
      fro2[job[t].row] = sum;
    }
  });
}

void certify_ritz_batch_twin(const RitzBatch& batch, const at::Tensor& rank, const at::Tensor& status) {
  const RitzArgs args = ritz_args(batch, rank, status, c10::DeviceType::CPU);
  int64_t* rank_out = rank.data_ptr<int64_t>();
  int* status_out = status.data_ptr<int>();
  for (int64_t i = 0; i < args.count; ++i) certify_batch_member(args, i, rank_out, status_out);
}

at::Tensor gap_basis_widths_twin(const at::Tensor& values, const at::Tensor& rank, int64_t k) {
  check_gap_width_args(values, rank, c10::DeviceType::CPU);
  const int64_t count = values.size(0), w = values.size(1);
  at::Tensor width = at::empty({count}, rank.options());
  const double* v = values.const_data_ptr<double>();
  const int64_t* r = rank.const_data_ptr<int64_t>();
  int64_t* out = width.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) gap_width_of_member(i, w, k, v, r, out);
  return width;
}

}  // namespace

void jacobi_eigh_twin(const at::Tensor& matrices, const at::Tensor& values, const at::Tensor& vectors,
                      const at::Tensor& converged) {
  TORCH_CHECK(matrices.device().is_cpu() && matrices.dim() == 3 &&
                  matrices.size(1) == matrices.size(2) && matrices.scalar_type() == at::kDouble &&
                  matrices.is_contiguous(),
              "jacobi_eigh: expected contiguous float64 (B, n, n) CPU matrices");
  const int64_t batch = matrices.size(0);
  const int64_t n = matrices.size(1);
  TORCH_CHECK(values.is_contiguous() && vectors.is_contiguous() && converged.is_contiguous() &&
                  values.scalar_type() == at::kDouble && vectors.scalar_type() == at::kDouble &&
                  values.numel() == batch * n && vectors.numel() == batch * n * n &&
                  converged.numel() == batch && converged.scalar_type() == at::kInt,
              "jacobi_eigh: output tensors of the wrong shape or layout");
  TORCH_CHECK(jacobi_eigh_fits_twin(n), "jacobi_eigh: n = ", n, " is past the solver's ",
              kJacobiMaxSize);
  const double* g = matrices.const_data_ptr<double>();
  double* vals = values.data_ptr<double>();
  double* vecs = vectors.data_ptr<double>();
  int* conv = converged.data_ptr<int>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      jacobi_one(g + i * n * n, static_cast<int>(n), vals + i * n, vecs + i * n * n, conv + i);
    }
  });
}

const BatchedKernels& batched_twin_kernels() {
  static const BatchedKernels kernels{load_matrices_twin,    finish_grams_twin,
                                      load_bases_twin,       write_outputs_twin,
                                      symmetrize_ritz_matrices_twin, ritz_residuals_twin,
                                      cholesky_qr_fits_twin, cholesky_qr_twin,
                                      jacobi_eigh_fits_twin, jacobi_eigh_twin,
                                      certify_ritz_batch_twin, gap_basis_widths_twin, nullptr};
  return kernels;
}

}  // namespace cpu

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> jacobi_eigh_cpu(const at::Tensor& matrices) {
  check_jacobi_eigh_args(matrices);
  const at::Tensor input = matrices.contiguous();
  const int64_t batch = input.size(0), n = input.size(1);
  at::Tensor values = at::empty({batch, n}, input.options());
  at::Tensor vectors = at::empty({batch, n, n}, input.options());
  at::Tensor converged = at::empty({batch}, input.options().dtype(at::kInt));
  cpu::jacobi_eigh_twin(input, values, vectors, converged);
  return {values, vectors, converged.ne(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(trp_ext, CPU, m) { m.impl("_jacobi_eigh", &jacobi_eigh_cpu); }

}  // namespace trp_ext
