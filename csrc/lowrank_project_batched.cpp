// The batched algorithm of lowrank_project (lowrank_project_batched.h): the whole list in a
// fixed number of batched steps, on the device's own kernels (BatchedKernels) and ATen's.
//
// Matrices are grouped by shorter side k (after orienting it first) and long sides within a
// factor of 2, zero-padded to the longest; each group is one batch of float64 work: Gram
// matrices by bmm, eigen-decompositions by the Jacobi kernel (k <= its size limit) or the
// device's batched eigensolver (torch.linalg.eigh where it has none), ranks by the energy_rank
// op (one call for all matrices), projections and sub-gradients by bmm with the columns beyond
// each rank masked. The steps around them are the device's own kernels, each one launch for the
// whole call or one a group (loading, Cholesky QR, Rayleigh-Ritz, the outputs), so that a call
// costs a fixed number of device operations however many matrices it has (bench/op_count.py).
// A warm start runs kWarmPowerSteps batched power steps (Cholesky QR) and one Rayleigh-Ritz
// step, and certify_ritz_batch accepts a matrix under the same bounds as the CPU kernel; the
// rest are solved cold. A float64 matrix cut below the Gram's reach (kGramResolvedFraction) is
// solved again by an SVD of the matrix, as on the CPU. Host syncs (on a GPU): energy_rank's own
// NaN check per call of it, one to read which warm starts held, and one at the end for the
// bases' widths (gap_basis_width, as on the CPU), the NaN/Inf flags and which matrices need the
// SVD; where some do, one more round of them (and the SVD's own error check). None per matrix.
#include "lowrank_project_batched.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "common/batched_bases.h"
#include "common/batched_load.h"
#include "common/batched_outputs.h"
#include "common/cholesky_qr.h"
#include "common/lowrank_project_checks.h"
#include "common/lowrank_project_policy.h"
#include "common/lowrank_project_stats.h"
#include "common/ritz_certificate.h"

namespace trp_ext {
namespace {

// A drifted basis needs a step before Rayleigh-Ritz (see the CPU kernel); a second one makes a
// batch certify far more often for little cost on a GPU. No data-dependent loop: each round
// of checks would cost a host sync.
constexpr int kWarmPowerSteps = 2;

using at::Tensor;

// A named range of the batched algorithm's phases in profiler traces (bench/launch_profile.py
// counts the device operations of each); free when no profiler is on.
#define TRP_PHASE(name) RECORD_FUNCTION("lowrank_project_batched::" name, std::vector<c10::IValue>())
// One device operation of the algorithm's own (a kernel of BatchedKernels, an upload) in those
// traces, for the scope it opens: bench/op_count.py counts it on the CPU twin as one operation,
// as a GPU runs it.
#define TRP_DEVICE_OP(name) \
  RECORD_FUNCTION("lowrank_project_batched::op::" name, std::vector<c10::IValue>())

// The matrices of one shorter side k and long sides within a factor of 2 (k <= len), as one
// batch, zero-padded to the longest: the padding changes neither the Gram matrix nor the
// products, and one batch costs the same launches whatever its size.
struct Group {
  int64_t k = 0, len = 0;          // len: the longest long side
  int64_t row = 0;                 // its first matrix's row in the load order (load_groups)
  std::vector<int64_t> index;      // positions in `mats`
  std::vector<char> transposed;    // stored len x k
  std::vector<int64_t> lens;       // each matrix's own long side
  Tensor a;                        // (B, k, len) float64, scaled by scale_lo * scale_hi
  Tensor scale_lo, scale_hi;       // (B): powers of two, each within range
  Tensor total, gram, gram_fro2;   // (B), (B, k, k), (B)
  Tensor value_cut, value_cut2;    // (B): value_threshold in the units of a, its square; -1: none
  // (B) int32 views of the call's flags table (common/batched_load.h): NaN/Inf in the matrix, in
  // its basis, and the warm start's RitzStatus (-1 if none ran).
  Tensor bad, bad_basis, status;
  // (B) float64, from each matrix's own shape: the sub-gradient's singular-value floor (a
  // fraction of s_1), the Gram's noise floor (of lambda_1) and an SVD's rank tolerance (of s_1).
  Tensor sub_floor, noise_factor, svd_tolerance;
};

// How a cold solve finds the spectrum: the Gram's eigen-decomposition, by the Jacobi kernel
// where it fits or by the device's batched solver; or an SVD of the matrix itself (float64 cuts the Gram cannot
// resolve).
enum class ColdSolver { kAuto, kLapack, kSvd };

// Eigenpairs of some matrices of a group and their ranks: what the outputs are built from.
struct Solved {
  Group* group = nullptr;
  std::vector<int64_t> local;  // positions in the group
  bool whole = false;          // local is the whole group in order: no gather, no upload
  Tensor sel;                  // local on the device; undefined when whole
  Tensor vectors, values;      // (n, k, w), (n, w) descending
  Tensor rank;                 // (n) int64
  Tensor converged;            // (n) int64: 1 where the eigensolver converged; undefined: all
  Tensor projected, subgradient;  // (n, k, len) float64, unscaled
  ColdSolver solver = ColdSolver::kAuto;  // of a cold solve (warm results: kAuto)
};

at::TensorOptions f64(const Tensor& like) { return like.options().dtype(at::kDouble); }

// To a GPU through pinned memory and asynchronously: a blocking copy from pageable memory makes
// ATen synchronise the stream, and this runs several times per shape group. The caching host
// allocator keeps the pinned block until the copy has run.
template <typename T>
Tensor to_device(const std::vector<T>& host, const Tensor& like) {
  TRP_DEVICE_OP("upload");
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const Tensor values = at::tensor(host, at::TensorOptions(dtype));
  if (like.device().is_cpu()) return values;
  return values.pin_memory().to(at::TensorOptions(like.device()).dtype(dtype), /*non_blocking=*/true);
}
Tensor device_index(const std::vector<int64_t>& host, const Tensor& like) {
  return to_device(host, like);
}

// A table of jobs (structs of int64 and double words, read by a kernel of BatchedKernels) on
// like's device, as a (count, words) int64 tensor: one upload.
template <typename Job>
Tensor upload_jobs(const std::vector<Job>& jobs, const Tensor& like) {
  static_assert(sizeof(Job) % sizeof(int64_t) == 0, "a job is whole int64 words");
  constexpr int64_t kWords = sizeof(Job) / sizeof(int64_t);
  std::vector<int64_t> words(jobs.size() * kWords);
  std::memcpy(words.data(), jobs.data(), jobs.size() * sizeof(Job));
  return to_device(words, like).view({static_cast<int64_t>(jobs.size()), kWords});
}

// Sets the part's matrices (positions in its group); the common case, the whole group in order,
// needs neither an index upload nor gathers (part_rows).
void set_local(Solved& s, std::vector<int64_t> local) {
  s.whole = static_cast<int64_t>(local.size()) == static_cast<int64_t>(s.group->index.size());
  for (size_t j = 0; s.whole && j < local.size(); ++j) s.whole = local[j] == static_cast<int64_t>(j);
  s.local = std::move(local);
  s.sel = s.whole ? Tensor() : device_index(s.local, s.group->a);
}

// The rows of a per-group tensor (first dimension: the group's matrices) that the part holds.
Tensor part_rows(const Tensor& t, const Solved& s) { return s.whole ? t : t.index_select(0, s.sel); }

// The per-matrix tables of a call, in load order (the groups' matrices one group after another):
// a group's fields are views of its consecutive columns, so that the whole call's flags go to the
// host in one piece.
struct CallTables {
  Tensor stats;  // (kStatsRows, n) float64 (common/batched_load.h)
  Tensor flags;  // (kFlagRows, n) int32 (common/batched_load.h)
  std::vector<int64_t> order;  // load order -> position in mats
};

// Every group's matrices as float64 batches, their Gram matrices and per-matrix values: one
// upload of the jobs, one load launch, a bmm per group and one launch that finishes the Gram
// matrices, whatever the count of matrices and groups.
CallTables load_groups(std::map<std::pair<int64_t, int64_t>, Group>& groups, at::TensorList mats,
                       std::optional<double> value_threshold, bool single,
                       const BatchedKernels& kernels) {
  TRP_PHASE("load");
  CallTables tables;
  for (const auto& [shape, g] : groups) {
    tables.order.insert(tables.order.end(), g.index.begin(), g.index.end());
  }
  const int64_t count = static_cast<int64_t>(tables.order.size());
  if (count == 0) return tables;
  const Tensor& first = mats[tables.order[0]];
  const at::TensorOptions options = f64(first);
  tables.stats = at::empty({kStatsRows, count}, options);
  tables.flags = at::empty({kFlagRows, count}, options.dtype(at::kInt));
  const Tensor& stats = tables.stats;
  const Tensor& flags = tables.flags;
  std::vector<LoadJob> jobs;
  int64_t row = 0;
  for (auto& [shape, g] : groups) {
    const int64_t batch = static_cast<int64_t>(g.index.size());
    g.a = at::empty({batch, g.k, g.len}, options);
    g.gram = at::empty({batch, g.k, g.k}, options);
    const int64_t block = g.k * g.len, gram_block = g.k * g.k;
    for (int64_t j = 0; j < batch; ++j) {
      const Tensor& mat = mats[g.index[j]];
      LoadJob job;
      job.src = reinterpret_cast<int64_t>(mat.const_data_ptr());
      job.row_stride = mat.stride(g.transposed[j] ? 1 : 0);
      job.col_stride = mat.stride(g.transposed[j] ? 0 : 1);
      job.k = g.k;
      job.len = g.lens[j];
      job.padded_len = g.len;
      job.dst = reinterpret_cast<int64_t>(g.a.data_ptr<double>() + j * block);
      job.gram = reinterpret_cast<int64_t>(g.gram.data_ptr<double>() + j * gram_block);
      job.row = row + j;
      job.sub_floor = subgradient_floor(single, g.k, g.lens[j]);
      job.noise_factor = gram_noise_factor(g.k, g.lens[j]);
      job.svd_tolerance = static_cast<double>(g.lens[j]) * std::numeric_limits<double>::epsilon();
      jobs.push_back(job);
    }
    auto stat = [&](LoadStats which) { return stats[which].narrow(0, row, batch); };
    g.scale_lo = stat(kStatScaleLo);
    g.scale_hi = stat(kStatScaleHi);
    g.total = stat(kStatTotal);
    g.value_cut = stat(kStatValueCut);
    g.value_cut2 = stat(kStatValueCut2);
    g.sub_floor = stat(kStatSubFloor);
    g.noise_factor = stat(kStatNoiseFactor);
    g.svd_tolerance = stat(kStatSvdTolerance);
    g.gram_fro2 = stat(kStatGramFro2);
    g.bad = flags[kFlagBad].narrow(0, row, batch);
    g.bad_basis = flags[kFlagBadBasis].narrow(0, row, batch);
    g.status = flags[kFlagStatus].narrow(0, row, batch);
    g.row = row;
    row += batch;
  }
  const Tensor table = upload_jobs(jobs, first);
  {
    TRP_DEVICE_OP("load_matrices");
    kernels.load_matrices(table, !single, value_threshold.value_or(-1.0), stats, flags);
  }
  for (auto& [shape, g] : groups) at::bmm_out(g.gram, g.a, g.a.transpose(1, 2));
  {
    TRP_DEVICE_OP("finish_grams");
    kernels.finish_grams(table, stats[kStatGramFro2]);
  }
  return tables;
}

// Eigen-decomposition of a batch of symmetric matrices, descending.
std::tuple<Tensor, Tensor, Tensor> eigh_descending(const Tensor& h, bool force_lapack,
                                                  const BatchedKernels& kernels) {
  TRP_PHASE("eigh");
  const int64_t batch = h.size(0), n = h.size(1);
  if (!force_lapack && kernels.jacobi_eigh_fits(n)) {
    Tensor values = at::empty({batch, n}, h.options());
    Tensor vectors = at::empty({batch, n, n}, h.options());
    Tensor converged = at::empty({batch}, h.options().dtype(at::kInt));
    const Tensor input = h.contiguous();
    TRP_DEVICE_OP("jacobi_eigh");
    kernels.jacobi_eigh(input, values, vectors, converged);
    return {values, vectors, converged.to(at::kLong)};
  }
  // Past the Jacobi kernel: the device's batched solver, one call for the batch with no host
  // sync (its failures come back as flags, redone by the forced path below); torch.linalg.eigh
  // where it has none, when forced (a redo), or when it declines.
  Tensor values, vectors, info;
  if (!force_lapack && kernels.batched_eigh != nullptr && kernels.batched_eigh(h, values, vectors, info)) {
    return {values.flip(1), vectors.flip(2), info.eq(0).to(at::kLong)};
  }
  std::tie(values, vectors) = at::linalg_eigh(h);  // ascending; syncs once to check its infos
  return {values.flip(1), vectors.flip(2), at::ones({batch}, h.options().dtype(at::kLong))};
}

// Cholesky QR, twice, of each (k, b) block; ok &= factorisation succeeded and the result is
// orthonormal (common/cholesky_qr.h). A failed factorisation is replaced by the identity so that
// the batch stays finite. One launch of the device's kernel where the width fits it, else ATen's
// composition (~19 launches).
// With `previous`, q is a power step G Q, whose columns are first scaled to unit norm, those G
// nearly annihilates keeping previous's (common/cholesky_qr.h).
Tensor orthonormalize(const Tensor& q, Tensor& ok, const BatchedKernels& kernels,
                      const Tensor& previous = Tensor()) {
  TRP_PHASE("orthonormalize");
  if (kernels.cholesky_qr_fits(q.size(2))) {
    const Tensor input = q.contiguous();
    Tensor x = at::empty_like(input);
    ok = ok.contiguous();
    const Tensor prior = previous.defined() ? previous.contiguous() : previous;
    TRP_DEVICE_OP("cholesky_qr");
    kernels.cholesky_qr(input, prior, x, ok);
    return x;  // ok updated in place
  }
  const int64_t batch = q.size(0), b = q.size(2);
  const Tensor eye = at::eye(b, q.options()).expand({batch, b, b});
  Tensor x = q;
  if (previous.defined()) {
    const Tensor norms = at::linalg_vector_norm(q, 2, {1}, /*keepdim=*/true);
    const Tensor stagnant = norms.le(kStagnantColumn * norms.amax({2}, /*keepdim=*/true));
    x = at::where(stagnant, previous, q / norms.clamp_min(DBL_MIN));
  }
  for (int pass = 0; pass < kCholeskyQrPasses; ++pass) {
    const Tensor s = at::bmm(x.transpose(1, 2), x);
    auto [lower, info] = at::linalg_cholesky_ex(s);
    const Tensor good = info.eq(0);
    ok = ok.logical_and(good);
    lower = at::where(good.view({-1, 1, 1}), lower, eye);
    x = at::linalg_solve_triangular(lower.transpose(1, 2), x, /*upper=*/true, /*left=*/false);
  }
  const Tensor deviation = (at::bmm(x.transpose(1, 2), x) - eye).abs().flatten(1).amax(1);
  ok = ok.logical_and(deviation.le(kOrthonormalTol));
  return x;
}

// The energy_rank op over rows of different widths: zero-padded to one batch, one call.
std::vector<Tensor> energy_ranks(const std::vector<Tensor>& rows, double energy) {
  TRP_PHASE("energy_ranks");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("trp_ext::energy_rank", "")
                             .typed<Tensor(const Tensor&, double)>();
  std::vector<Tensor> out;
  if (rows.empty()) return out;
  int64_t width = 0, count = 0;
  for (const Tensor& r : rows) {
    width = std::max(width, r.size(1));
    count += r.size(0);
  }
  Tensor batch = rows[0];
  if (rows.size() > 1) {  // one zero-padded batch: a copy per part
    batch = at::zeros({count, width}, rows[0].options());
    int64_t offset = 0;
    for (const Tensor& r : rows) {
      batch.narrow(0, offset, r.size(0)).narrow(1, 0, r.size(1)).copy_(r);
      offset += r.size(0);
    }
  }
  // NaN only reaches here from an eigensolver that did not converge, whose part is solved again
  // (flagged matrices were loaded as zeros).
  const Tensor ranks = op.call(at::nan_to_num(batch, 0.0, 0.0, 0.0), energy);
  int64_t offset = 0;
  for (const Tensor& r : rows) {
    out.push_back(ranks.narrow(0, offset, r.size(0)));
    offset += r.size(0);
  }
  return out;
}

// The warm attempt on one group: power steps and Rayleigh-Ritz from the given bases.
struct WarmAttempt {
  Group* group = nullptr;
  std::vector<char> tried;  // the matrix has a non-empty basis
  int64_t b = 0;            // the group's widest basis
  Tensor q;                 // (B, k, b) float64: the starting blocks
  Tensor ok;                // (B) bool: the warm start can go on (a view of the call's vector)
  Tensor usable, vectors, values, res2, rows, rank, status;
};

// The warm attempts of every group given a basis, their starting blocks made in one launch
// (common/batched_bases.h), which also flags NaN and Inf in the bases.
std::vector<WarmAttempt> start_warm_attempts(std::map<std::pair<int64_t, int64_t>, Group>& groups,
                                             at::TensorList bases, const CallTables& tables,
                                             bool single, const BatchedKernels& kernels) {
  TRP_PHASE("load_bases");
  std::vector<WarmAttempt> attempts;
  std::vector<BasisJob> jobs;
  int64_t count = 0;  // entries of the call's ok vector
  for (auto& [shape, g] : groups) {
    WarmAttempt w;
    w.group = &g;
    const int64_t batch = g.index.size(), k = g.k;
    for (int64_t j = 0; j < batch; ++j) {
      const int64_t width = bases[g.index[j]].size(1);
      w.tried.push_back(width > 0);
      w.b = std::max(w.b, width);
    }
    if (w.b == 0) continue;
    w.q = at::empty({batch, k, w.b}, f64(g.a));
    for (int64_t j = 0; j < batch; ++j) {
      const Tensor& basis = bases[g.index[j]];
      BasisJob job;
      job.src = reinterpret_cast<int64_t>(basis.const_data_ptr());
      job.row_stride = basis.stride(0);
      job.col_stride = basis.stride(1);
      job.width = basis.size(1);
      job.dst = reinterpret_cast<int64_t>(w.q.data_ptr<double>() + j * k * w.b);
      job.k = k;
      job.b = w.b;
      job.noise_offset = j * k * w.b;
      job.flag_row = g.row + j;
      job.ok_index = count + j;
      jobs.push_back(job);
    }
    count += batch;
    attempts.push_back(std::move(w));
  }
  if (attempts.empty()) return attempts;
  const Tensor ok = at::empty({count}, tables.flags.options().dtype(at::kBool));
  const Tensor table = upload_jobs(jobs, tables.flags);
  {
    TRP_DEVICE_OP("load_bases");
    kernels.load_bases(table, !single, tables.flags, ok);
  }
  int64_t offset = 0;
  for (WarmAttempt& w : attempts) {
    const int64_t batch = static_cast<int64_t>(w.group->index.size());
    w.ok = ok.narrow(0, offset, batch);
    offset += batch;
  }
  return attempts;
}

void warm_start(WarmAttempt& w, const BatchedKernels& kernels) {
  TRP_PHASE("warm_start");
  Group& g = *w.group;
  Tensor& ok = w.ok;
  Tensor q = orthonormalize(w.q, ok, kernels);
  for (int step = 0; step < kWarmPowerSteps; ++step) {
    // Columns of G Q scaled to unit norm (stagnant ones keep q's), then orthonormalised.
    q = orthonormalize(at::bmm(g.gram, q), ok, kernels, /*previous=*/q);
  }
  // Rayleigh-Ritz: H = Q^T G Q = E Theta E^T, U = Q E, G U = (G Q) E.
  const Tensor gq = at::bmm(g.gram, q);
  const Tensor h = at::bmm(q.transpose(1, 2), gq);
  {
    TRP_DEVICE_OP("symmetrize_ritz_matrices");  // exactly symmetric, zero where not ok
    kernels.symmetrize_ritz_matrices(h, ok);
  }
  auto [theta, e, converged] = eigh_descending(h, /*force_lapack=*/false, kernels);
  w.usable = ok.logical_and(converged);
  w.values = theta.contiguous();
  w.vectors = at::bmm(q, e);
  const Tensor gu = at::bmm(gq, e);
  // The residuals, and the rank rule on the Ritz values with the energy outside span(Q) lumped
  // as one more value.
  const int64_t batch = static_cast<int64_t>(g.index.size());
  w.res2 = at::empty({batch, w.b}, gu.options());
  w.rows = at::empty({batch, w.b + 1}, gu.options());
  const Tensor total = g.total.contiguous();
  {
    TRP_DEVICE_OP("ritz_residuals");
    kernels.ritz_residuals(gu, w.vectors, w.values, total, w.res2, w.rows);
  }
}

void certify(WarmAttempt& w, const Tensor& energy_rank, const std::optional<int64_t>& max_rank,
             bool want_subgradient, bool single, const BatchedKernels& kernels) {
  TRP_PHASE("certify");
  Group& g = *w.group;
  const WarmTolerances tol = warm_tolerances(single);
  RitzBatch batch;
  batch.k = g.k;
  batch.b = w.b;
  batch.theta = w.values.contiguous();
  batch.res2 = w.res2.contiguous();
  batch.gram_fro2 = g.gram_fro2.contiguous();
  batch.total = g.total.contiguous();
  batch.value_cut2 = g.value_cut2.contiguous();
  batch.sub_floor = g.sub_floor.contiguous();
  batch.energy_rank = energy_rank.contiguous();
  batch.usable = w.usable.contiguous();
  batch.max_rank = max_rank.value_or(-1);
  batch.want_subgradient = want_subgradient;
  batch.tol_rank = tol.rank;
  batch.tol_proj = tol.proj;
  batch.tol_sub = tol.sub;
  w.rank = at::empty({static_cast<int64_t>(g.index.size())}, g.total.options().dtype(at::kLong));
  w.status = g.status;  // written into the call's status column
  {
    TRP_DEVICE_OP("certify_ritz_batch");
    kernels.certify_ritz_batch(batch, w.rank, w.status);
  }
}

// The spectrum of the given matrices of a group from an SVD of each matrix (LAPACK or cuSOLVER
// through ATen) instead of its Gram: values s_i^2, with singular values at or below max(k, len) eps s_1
// counted as zero (a float64 SVD's own rounding, numpy's rank rule), as the CPU's
// refine_with_svd has them.
void svd_spectrum(Solved& s) {
  const Group& g = *s.group;
  const Tensor a = part_rows(g.a, s);
  const auto [u, singular, vh] = at::linalg_svd(a, /*full_matrices=*/false);  // syncs: its infos
  const Tensor tolerance = (singular.select(1, 0) * part_rows(g.svd_tolerance, s)).unsqueeze(1);
  s.values = at::where(singular > tolerance, singular.square(), at::zeros_like(singular));
  s.vectors = u;
  s.converged = at::ones({singular.size(0)}, singular.options().dtype(at::kLong));
}

// Full spectra of the given matrices of a group; ranks follow from `rows`.
Solved solve_cold(Group& g, std::vector<int64_t> local, ColdSolver solver,
                  const BatchedKernels& kernels) {
  TRP_PHASE("solve_cold");
  Solved s;
  s.group = &g;
  set_local(s, std::move(local));
  s.solver = solver;
  if (solver == ColdSolver::kSvd) {
    svd_spectrum(s);
    return s;
  }
  const Tensor gram = part_rows(g.gram, s);
  auto [values, vectors, converged] = eigh_descending(gram, solver == ColdSolver::kLapack, kernels);
  // G is PSD; eigenvalues within its rounding count as zero, as on the CPU (see
  // gram_noise_factor): without it, energy = 1 ranks would count the null space's noise.
  const Tensor floor = (values.select(1, 0) * part_rows(g.noise_factor, s)).unsqueeze(1);
  s.values = at::where(values > floor, values, 0.0);
  s.vectors = vectors;
  s.converged = converged;
  return s;
}

// The caps of the rank rule on a full spectrum: count of singular values >= value_threshold
// (compared as singular values, as on the CPU), then max_rank.
Tensor cap_ranks(const Tensor& energy_rank, const Tensor& singular, const Tensor& value_cut,
                 const std::optional<double>& value_threshold, const std::optional<int64_t>& max_rank) {
  Tensor rank = energy_rank;
  if (value_threshold.has_value()) {
    const Tensor count = (singular >= value_cut.unsqueeze(1)).sum(1);
    rank = at::minimum(rank, count);
  }
  if (max_rank.has_value()) rank = rank.clamp_max(*max_rank);
  return rank;
}

// Which matrices of a float64 part need the SVD (kGramResolvedFraction): a cut below the Gram's
// reach, or, at energy 1, a rank its noise floor set (the next value is zero, or the spectrum
// ends at the rank), not a cap.
Tensor needs_svd_refinement(const Solved& s, double energy, bool single) {
  if (single || s.solver == ColdSolver::kSvd) return at::zeros_like(s.rank, at::kBool);
  const int64_t width = s.values.size(1);
  const Tensor last = s.values.gather(1, (s.rank - 1).clamp_min(0).unsqueeze(1)).squeeze(1);
  Tensor needs = last < s.values.select(1, 0) * kGramResolvedFraction;
  if (energy >= 1.0) {
    const Tensor next = s.values.gather(1, s.rank.clamp_max(width - 1).unsqueeze(1)).squeeze(1);
    const Tensor ends_at_rank = s.rank.ge(width).logical_or(next.eq(0.0));
    const Tensor noise_limited = s.rank.lt(s.group->k).logical_and(ends_at_rank);
    needs = needs.logical_or(noise_limited);
  }
  return needs.logical_and(s.rank.gt(0));
}

// The part reduced to the given rows (positions in it): the others are solved again elsewhere.
void keep_rows(Solved& s, const std::vector<int64_t>& rows) {
  std::vector<int64_t> local;
  for (int64_t j : rows) local.push_back(s.local[j]);
  const Tensor keep = device_index(rows, s.rank);
  set_local(s, std::move(local));
  s.vectors = s.vectors.index_select(0, keep);
  s.values = s.values.index_select(0, keep);
  s.rank = s.rank.index_select(0, keep);
  if (s.converged.defined()) s.converged = s.converged.index_select(0, keep);
}

// P = U_r (U_r^T A) and U_r S_r^-1 (U_r^T A), with the columns beyond each rank masked out.
void build_outputs(Solved& s, bool want_subgradient) {
  TRP_PHASE("build_outputs");
  Group& g = *s.group;
  const int64_t width = s.vectors.size(2);
  const Tensor a = part_rows(g.a, s);
  const Tensor keep = at::arange(width, s.rank.options()).unsqueeze(0) < s.rank.unsqueeze(1);
  const Tensor u = s.vectors * keep.unsqueeze(1);
  const Tensor w = at::bmm(u.transpose(1, 2), a);
  // Undo the scaling in two factors, like it was applied: exact (powers of two), and never
  // overflowing.
  s.projected = at::bmm(u, w)
                    .div_(part_rows(g.scale_lo, s).view({-1, 1, 1}))
                    .div_(part_rows(g.scale_hi, s).view({-1, 1, 1}));
  if (want_subgradient) {
    const Tensor sub_floor = part_rows(g.sub_floor, s);
    const Tensor floor2 = (s.values.select(1, 0) * sub_floor.square()).unsqueeze(1);
    const Tensor kept = keep.logical_and(s.values > floor2);
    const Tensor inverse =
        at::where(kept, s.values.clamp_min(DBL_MIN).rsqrt(), at::zeros_like(s.values));
    s.subgradient = at::bmm(s.vectors * inverse.unsqueeze(1), w);
  }
}

std::vector<int64_t> global_index(const Solved& s) {
  std::vector<int64_t> global;
  for (int64_t j : s.local) global.push_back(s.group->index[j]);
  return global;
}

}  // namespace

std::tuple<std::vector<Tensor>, Tensor, std::vector<Tensor>, std::vector<Tensor>>
lowrank_project_batched(at::TensorList mats, double energy, std::optional<double> value_threshold,
                        std::optional<int64_t> max_rank, std::optional<at::TensorList> bases,
                        bool want_subgradient, const BatchedKernels& kernels) {
  check_lowrank_project_args(mats, energy, value_threshold, max_rank, bases);
  const int64_t count = static_cast<int64_t>(mats.size());
  const bool single = mats[0].scalar_type() == at::kFloat;
  const bool try_warm = bases.has_value() && energy < 1.0;

  // 1. Group by shorter side, and long sides within a factor of 2 of the group's shortest (so
  // that the zero padding at most doubles a matrix); empty matrices need no device work.
  std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> by_k;  // k -> (long side, index)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t m = mats[i].size(0), n = mats[i].size(1);
    if (std::min(m, n) > 0) by_k[std::min(m, n)].push_back({std::max(m, n), i});
  }
  std::map<std::pair<int64_t, int64_t>, Group> groups;  // (k, shortest long side) -> group
  for (auto& [k, members] : by_k) {
    std::stable_sort(members.begin(), members.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    int64_t shortest = 0;
    for (const auto& [len, i] : members) {
      if (shortest == 0 || len > 2 * shortest) shortest = len;
      Group& g = groups[{k, shortest}];
      g.k = k;
      g.len = len;  // sorted: the last one is the longest
      g.index.push_back(i);
      g.lens.push_back(len);
      g.transposed.push_back(mats[i].size(0) > mats[i].size(1));
    }
  }
  const CallTables tables = load_groups(groups, mats, value_threshold, single, kernels);
  const int64_t loaded = static_cast<int64_t>(tables.order.size());
  if (bases.has_value() && !try_warm) {
    // No warm start reads them (energy = 1), but a NaN or Inf in a given basis is still bad
    // input, reported as the CPU kernel reports it; on the device, read with the other flags.
    for (auto& [shape, g] : groups) {
      std::vector<Tensor> finite;
      for (int64_t i : g.index) finite.push_back(at::isfinite((*bases)[i]).all());
      at::logical_not_out(g.bad_basis, at::stack(finite));
    }
  }

  // 2. Warm starts, certified; then one sync to learn which held.
  std::vector<ProjectPath> path(count, ProjectPath::kCold);
  std::vector<char> warm_held(count, 0), zero_matrix(count, 0);
  std::vector<WarmAttempt> attempts;
  if (try_warm) {
    attempts = start_warm_attempts(groups, *bases, tables, single, kernels);
    for (WarmAttempt& w : attempts) warm_start(w, kernels);
    std::vector<Tensor> rows;
    for (WarmAttempt& w : attempts) rows.push_back(w.rows);
    const std::vector<Tensor> ranks = energy_ranks(rows, energy);
    for (size_t t = 0; t < attempts.size(); ++t) {
      certify(attempts[t], ranks[t], max_rank, want_subgradient, single, kernels);
    }
  }
  // Flags per matrix, in load order (common/batched_load.h): NaN/Inf in it or its basis, zero
  // matrix, warm status. Read at once when warm starts were tried (their outcome decides what to
  // solve cold), else with the ranks.
  auto read_flags = [&](auto f) {  // f: the (kFlagRows, loaded) table, int32 or int64
    std::vector<int64_t> row_of(count, -1);  // position in mats -> load order (-1: empty matrix)
    for (int64_t r = 0; r < loaded; ++r) row_of[tables.order[r]] = r;
    auto flag = [&](int64_t i, LoadFlags which) -> int64_t {
      return row_of[i] < 0 ? 0 : f[which * loaded + row_of[i]];
    };
    for (int64_t i = 0; i < count; ++i) {
      if (flag(i, kFlagBad) == 1) raise_nonfinite("mats", i);
    }
    for (int64_t i = 0; i < count; ++i) {
      if (flag(i, kFlagBadBasis) == 1) raise_nonfinite("bases", i);
      zero_matrix[i] = flag(i, kFlagZero) == 1;
    }
    for (WarmAttempt& w : attempts) {
      for (size_t j = 0; j < w.group->index.size(); ++j) {
        const int64_t i = w.group->index[j];
        if (!w.tried[j] || zero_matrix[i]) continue;  // no basis, or a zero matrix: cold
        warm_held[i] = flag(i, kFlagStatus) == kRitzCertified;
        path[i] = warm_held[i] ? ProjectPath::kWarm : ProjectPath::kFallback;
      }
    }
  };
  if (try_warm && loaded > 0) {
    const Tensor host = tables.flags.cpu();  // host sync: NaN/Inf checks and which warm starts held
    read_flags(host.const_data_ptr<int32_t>());
  }

  // 3. Certified warm results, and cold solves of the rest.
  std::vector<Solved> solved;
  for (WarmAttempt& w : attempts) {
    Solved s;
    s.group = w.group;
    for (size_t j = 0; j < w.group->index.size(); ++j) {
      if (warm_held[w.group->index[j]]) s.local.push_back(static_cast<int64_t>(j));
    }
    if (s.local.empty()) continue;
    std::vector<int64_t> local = std::move(s.local);
    set_local(s, std::move(local));
    s.vectors = part_rows(w.vectors, s);
    s.values = part_rows(w.values, s).clamp_min(0.0);
    s.rank = part_rows(w.rank, s);
    // s.converged stays undefined: a certified warm result converged.
    solved.push_back(std::move(s));
  }
  using Work = std::vector<std::pair<Group*, std::vector<int64_t>>>;
  auto solve_and_rank = [&](Work work, ColdSolver solver) {
    std::vector<Solved> cold;
    std::vector<Tensor> rows;
    for (auto& [g, local] : work) {
      cold.push_back(solve_cold(*g, std::move(local), solver, kernels));
      rows.push_back(cold.back().values.sqrt());
    }
    const std::vector<Tensor> ranks = energy_ranks(rows, energy);
    for (size_t t = 0; t < cold.size(); ++t) {
      const Tensor cut = value_threshold.has_value() ? part_rows(cold[t].group->value_cut, cold[t]) : Tensor();
      cold[t].rank = cap_ranks(ranks[t], rows[t], cut, value_threshold, max_rank);
    }
    return cold;
  };
  {
    Work work;
    for (auto& [shape, g] : groups) {
      std::vector<int64_t> local;
      for (size_t j = 0; j < g.index.size(); ++j) {
        if (!warm_held[g.index[j]]) local.push_back(static_cast<int64_t>(j));
      }
      if (!local.empty()) work.emplace_back(&g, std::move(local));
    }
    for (Solved& s : solve_and_rank(std::move(work), ColdSolver::kAuto)) solved.push_back(std::move(s));
  }

  // 4. The bases' widths, the convergence flags and which matrices need the SVD to the host, one
  // sync. A part whose Jacobi solve hit the sweep limit, or whose batched solve did not
  // converge, is solved again through torch.linalg.eigh, and the matrices that need it by the
  // SVD, each at the cost of one more round.
  std::vector<int64_t> width_of(count, 0);
  std::vector<std::pair<int64_t, int64_t>> found(count, {-1, -1});  // (part, row in the part)
  std::vector<Solved> done;
  for (bool first = true;; first = false) {
    std::vector<Tensor> parts;
    const bool with_flags = !try_warm && first && loaded > 0;
    if (with_flags) parts.push_back(tables.flags.view({-1}).to(at::kLong));
    // Per part, n values each: converged (unless known), the basis widths, and for float64 which
    // need the SVD.
    for (Solved& s : solved) {
      if (s.converged.defined()) parts.push_back(s.converged);
      const Tensor values = s.values.contiguous(), rank = s.rank.contiguous();
      TRP_DEVICE_OP("gap_basis_widths");
      parts.push_back(kernels.gap_basis_widths(values, rank, s.group->k));
      if (!single) parts.push_back(needs_svd_refinement(s, energy, single).to(at::kLong));
    }
    if (parts.empty()) break;  // only empty matrices
    const Tensor host = at::cat(parts).cpu();  // host sync: the widths (and flags)
    const int64_t* h = host.const_data_ptr<int64_t>();
    if (with_flags) {
      read_flags(h);
      h += loaded * kFlagRows;
    }
    Work redo, refine;
    for (Solved& s : solved) {
      const int64_t n = static_cast<int64_t>(s.local.size());
      bool converged = true;
      if (s.converged.defined()) {
        for (int64_t j = 0; j < n; ++j) converged &= h[j] != 0;
        h += n;
      }
      const int64_t* part = h;  // widths, then (float64) the SVD flags
      h += single ? n : 2 * n;
      if (!converged) {
        TORCH_CHECK(s.solver == ColdSolver::kAuto,
                    "lowrank_project(): the LAPACK/cuSOLVER eigensolver did not converge");
        redo.emplace_back(s.group, s.local);
        continue;
      }
      std::vector<int64_t> to_refine, kept;  // positions in the group; in the part
      for (int64_t j = 0; j < n; ++j) {
        if (!single && part[n + j] != 0) {
          to_refine.push_back(s.local[j]);
        } else {
          kept.push_back(static_cast<int64_t>(j));
        }
      }
      if (!to_refine.empty()) refine.emplace_back(s.group, std::move(to_refine));
      if (kept.empty()) continue;
      for (size_t j = 0; j < kept.size(); ++j) {
        const int64_t i = s.group->index[s.local[kept[j]]];
        width_of[i] = part[kept[j]];
        found[i] = {static_cast<int64_t>(done.size()), static_cast<int64_t>(j)};
      }
      if (kept.size() < s.local.size()) keep_rows(s, kept);
      done.push_back(std::move(s));
    }
    solved.clear();
    for (Solved& s : solve_and_rank(std::move(redo), ColdSolver::kLapack)) solved.push_back(std::move(s));
    for (Solved& s : solve_and_rank(std::move(refine), ColdSolver::kSvd)) solved.push_back(std::move(s));
    if (solved.empty()) break;
  }
  solved = std::move(done);
  for (Solved& s : solved) build_outputs(s, want_subgradient);

  // 5. Outputs in the order of `mats`, each its own allocation (outputs may not alias one
  // another), all written by one launch (common/batched_outputs.h), whatever their count, shapes
  // and orientations; the ranks gathered by one scatter.
  std::vector<Tensor> projected(count), subgradients, new_bases(count);
  if (want_subgradient) subgradients.resize(count);
  Tensor ranks = at::zeros({count}, mats[0].options().dtype(at::kLong));
  if (!solved.empty()) {
    std::vector<Tensor> part_ranks;
    std::vector<int64_t> positions;
    for (const Solved& s : solved) {
      part_ranks.push_back(s.rank);
      const std::vector<int64_t> global = global_index(s);
      positions.insert(positions.end(), global.begin(), global.end());
    }
    const Tensor all = part_ranks.size() == 1 ? part_ranks[0] : at::cat(part_ranks);
    ranks.index_copy_(0, device_index(positions, ranks), all);
  }
  std::vector<OutputJob> jobs;
  // Output `out` (rows x cols) from row j of a part's (n, R, C) float64 tensor, read transposed
  // for a matrix stored len x k.
  auto add_job = [&](const Tensor& part, int64_t j, bool transposed, const Tensor& out) {
    if (out.numel() == 0) return;
    OutputJob job;
    job.src = reinterpret_cast<int64_t>(part.const_data_ptr<double>() + j * part.stride(0));
    job.row_stride = transposed ? part.stride(2) : part.stride(1);
    job.col_stride = transposed ? part.stride(1) : part.stride(2);
    job.dst = reinterpret_cast<int64_t>(out.data_ptr());
    job.rows = out.size(0);
    job.cols = out.size(1);
    jobs.push_back(job);
  };
  for (int64_t i = 0; i < count; ++i) {
    const Tensor& mat = mats[i];
    const int64_t k = std::min(mat.size(0), mat.size(1));
    const at::TensorOptions options = mat.options().memory_format(at::MemoryFormat::Contiguous);
    const auto [part, j] = found[i];
    if (part < 0) {  // an empty matrix
      projected[i] = at::zeros(mat.sizes(), mat.options());
      if (want_subgradient) subgradients[i] = at::zeros(mat.sizes(), mat.options());
      new_bases[i] = at::empty({k, 0}, mat.options());
      count_project_path(ProjectPath::kCold, 0);
      continue;
    }
    const Solved& s = solved[part];
    const bool transposed = mat.size(0) > mat.size(1);
    projected[i] = at::empty(mat.sizes(), options);
    add_job(s.projected, j, transposed, projected[i]);
    if (want_subgradient) {
      subgradients[i] = at::empty(mat.sizes(), options);
      add_job(s.subgradient, j, transposed, subgradients[i]);
    }
    // A zero matrix returns an empty basis, as on the CPU: it warm-starts nothing.
    const int64_t width = zero_matrix[i] ? 0 : std::min<int64_t>(s.vectors.size(2), width_of[i]);
    new_bases[i] = at::empty({k, width}, mat.options());
    add_job(s.vectors, j, false, new_bases[i]);
    count_project_path(path[i], path[i] == ProjectPath::kCold ? 0 : kWarmPowerSteps + 1);
  }
  if (!jobs.empty()) {
    const Tensor table = upload_jobs(jobs, ranks);
    int64_t largest = 0;
    for (const OutputJob& job : jobs) largest = std::max(largest, job.rows * job.cols);
    TRP_DEVICE_OP("write_outputs");
    kernels.write_outputs(table, !single, largest);
  }
  return {projected, ranks, subgradients, new_bases};
}

}  // namespace trp_ext
