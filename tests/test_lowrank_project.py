"""lowrank_project against torch.linalg.svd in float64: ranks, projections, sub-gradients, warm starts.

The contract (issue #4), checked on decaying spectra, random matrices and briefly trained weights:
  * ranks equal the exact ones, except where the exact cumulative energy lies within 1e-6
    (relative) of the threshold;
  * ||P - P_exact||_F / ||W||_F is at most twice the error of torch.linalg.svd in the same dtype,
    or 1e-5 in float32 (1e-10 in float64), whichever is larger; P_exact is taken at the returned
    rank, so that an allowed rank difference does not count twice;
  * the sub-gradient is within 1e-3 (relative, Frobenius) of U_r V_r^T from the exact SVD, over
    the kept singular values above the documented tolerance;
  * warm-started results obey the same bounds.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import CUDA
from trp_ext import _reference as ref
from trp_ext import ops
from trp_ext.models import build_model
from trp_ext.selection import select_layers

RANK_BAND = 1e-6
FLOOR = {torch.float32: 1e-5, torch.float64: 1e-10}
SUB_TOL = 1e-3
EPS64 = torch.finfo(torch.float64).eps


# ----------------------------------------------------------------------------- devices
# "batched": the CUDA kernel's algorithm, run on the CPU twins of its own kernels
# (ops.cpu_batched_projection): every device test checks it here too, where no GPU is.
BATCHED = "batched"


@pytest.fixture(params=["cpu", BATCHED, CUDA])
def device(request):
    if request.param != BATCHED:
        yield request.param
        return
    with ops.cpu_batched_projection("always"):
        yield "cpu"


def runs_cpu_solver(device):
    """Whether calls on `device` run the CPU kernel's own per-matrix solver (whose warm starts
    widen a basis; the batched algorithm falls back to cold instead)."""
    return device == "cpu" and ops.cpu_batched_projection_mode() != "always"


# ----------------------------------------------------------------------------- matrices
def decaying(m, n, tau, dtype=torch.float32, seed=0, device="cpu"):
    """U diag(exp(-i / tau)) V^T with random orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    s = torch.exp(-torch.arange(k, dtype=torch.float64) / tau)
    return ((u * s) @ v.T).to(dtype=dtype, device=device)


def gaussian(m, n, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def drift(mat, relative, seed):
    """A few SGD steps' worth of change: a random perturbation of the given relative size."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(mat.shape, generator=gen, dtype=torch.float64).to(mat.device)
    return (mat.double() + relative * mat.double().norm() / math.sqrt(mat.numel()) * noise).to(mat.dtype)


def mixed_list(dtype, device, seed=0):
    """Different shapes in one call: channel- and spatial-scheme sizes, both orientations, and
    rows longer than the CPU's own Gram kernel takes (1300: BLAS forms that Gram)."""
    shapes_taus = [((16, 144), 2.0), ((144, 16), 3.0), ((32, 288), 4.0), ((48, 48), 6.0),
                   ((96, 96), 12.0), ((48, 96), 6.0), ((64, 576), 8.0), ((7, 5), 1.0),
                   ((1300, 24), 3.0)]
    mats = [decaying(m, n, tau, dtype, seed + i, device) for i, ((m, n), tau) in enumerate(shapes_taus)]
    mats += [gaussian(20, 60, dtype, seed + 50, device), gaussian(33, 12, dtype, seed + 51, device)]
    return mats


def warm_list(dtype, device, seed=0):
    """Sizes where warm starts apply on every device (the CPU solves k < 48 cold)."""
    shapes_taus = [((64, 576), 8.0), ((576, 64), 8.0), ((96, 96), 12.0), ((128, 300), 16.0), ((70, 70), 9.0),
                   ((48, 144), 6.0)]
    return [decaying(m, n, tau, dtype, seed + i, device) for i, ((m, n), tau) in enumerate(shapes_taus)]


def counted(stats):
    return stats["cold"] + stats["warm"] + stats["widened"] + stats["fallback"]


@pytest.fixture(scope="module")
def trained_weights():
    """Conv weights of a ResNet-20 after a few SGD steps on random data, in both schemes."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(16, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    layers = select_layers(model)
    return {scheme: [ref.conv_weight_to_matrix(m.weight.detach(), scheme).contiguous() for _, m in layers]
            for scheme in ref.SCHEMES}


# ----------------------------------------------------------------------------- the contract
def subgradient_floor(mat):
    """Relative singular value at or below which a direction is left out of the sub-gradient."""
    m, n = mat.shape
    eps = torch.finfo(mat.dtype).eps
    return max(max(m, n) * eps, math.sqrt(1e3 * (m + n) * EPS64))


def energy_band_ok(s, energy, r1, r2):
    """Ranks r1 < r2 are both allowed where the cumulative energies of ranks r1 .. r2 - 1 all lie
    within the band around the target: rounding can move each of them across it. (The energy of
    rank r2 itself need not: a tie at rank r1 makes r2 the next rank up, whatever its energy.)"""
    s = s / s[0] if s[0] > 0 else s  # squares of values near the float64 limit overflow
    c = torch.cat([s.new_zeros(1), torch.cumsum(s * s, 0)])  # c[r]: the energy of rank r
    total = c[-1]
    target = energy * total
    lo, hi = min(r1, r2), max(r1, r2)
    return bool(((c[lo:hi] - target).abs() <= RANK_BAND * total).all())


def svd_error(mat, rank, p_exact):
    """The projection error of torch.linalg.svd run in mat's dtype, at the given rank."""
    if rank == 0:
        return 0.0
    u, s, vh = torch.linalg.svd(mat.cpu(), full_matrices=False)
    p = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return float((p.double() - p_exact).norm() / mat.double().norm())


def check(mat, projected, rank, energy, value_threshold=None, max_rank=None, subgradient=None):
    """Asserts the contract for one matrix; returns the projection error."""
    a = mat.detach().cpu().double()
    assert projected.shape == mat.shape and projected.dtype == mat.dtype
    assert projected.device == mat.device
    p = projected.cpu().double()
    assert torch.isfinite(p).all()
    if a.norm() == 0:
        assert rank == 0 and p.abs().max() == 0
        if subgradient is not None:
            assert subgradient.abs().max() == 0
        return 0.0
    u, s, vh = ref.svd64(a)
    exact = ref.select_rank(s, energy, value_threshold, max_rank)
    if rank != exact:
        capped = ((value_threshold is not None and (s - value_threshold).abs().min() <= RANK_BAND * s[0])
                  or (max_rank is not None and min(rank, exact) == max_rank))
        assert energy_band_ok(s, energy, rank, exact) or capped, (
            f"rank {rank} != exact {exact} for shape {tuple(mat.shape)}; spectrum head {s[:8].tolist()}")
    p_exact = (u[:, :rank] * s[:rank]) @ vh[:rank]
    err = float((p - p_exact).norm() / a.norm())
    bound = max(2 * svd_error(mat, rank, p_exact), FLOOR[mat.dtype])
    assert err <= bound, f"projection error {err:.3e} > {bound:.3e} (rank {rank}, shape {tuple(mat.shape)})"
    if subgradient is not None:
        assert subgradient.shape == mat.shape and subgradient.dtype == mat.dtype
        kept = int((s[:rank] > subgradient_floor(mat) * s[0]).sum())
        sub_exact = u[:, :kept] @ vh[:kept]
        sub = subgradient.cpu().double()
        if kept == 0:
            assert sub.abs().max() == 0
        else:
            rel = float((sub - sub_exact).norm() / sub_exact.norm())
            assert rel <= SUB_TOL, f"sub-gradient error {rel:.3e} (rank {rank}, shape {tuple(mat.shape)})"
    return err


def check_all(mats, result, energy, value_threshold=None, max_rank=None, want_subgradient=False):
    assert result.ranks.dtype == torch.int64 and result.ranks.shape == (len(mats),)
    assert result.ranks.device == mats[0].device
    assert len(result.projected) == len(mats) and len(result.bases) == len(mats)
    assert len(result.subgradients) == (len(mats) if want_subgradient else 0)
    for i, mat in enumerate(mats):
        sub = result.subgradients[i] if want_subgradient else None
        check(mat, result.projected[i], int(result.ranks[i]), energy, value_threshold, max_rank, sub)
        basis = result.bases[i]
        assert basis.dtype == mat.dtype and basis.device == mat.device
        assert basis.shape[0] == min(mat.shape) and basis.shape[1] <= min(mat.shape)


# ----------------------------------------------------------------------------- cold
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 1.0])
def test_mixed_shapes_match_svd(device, dtype, energy):
    mats = mixed_list(dtype, device)
    result = ops.lowrank_project(mats, energy, want_subgradient=True)
    check_all(mats, result, energy, want_subgradient=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ref.SCHEMES)
def test_trained_weights_match_svd(device, dtype, scheme, trained_weights):
    mats = [m.to(dtype=dtype, device=device) for m in trained_weights[scheme]]
    for energy in (0.9, 0.99):
        result = ops.lowrank_project(mats, energy, want_subgradient=True)
        check_all(mats, result, energy, want_subgradient=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_matrices_match_svd(device, dtype):
    mats = [gaussian(m, n, dtype, seed, device) for seed, (m, n) in
            enumerate([(10, 10), (64, 64), (64, 576), (200, 40), (1, 30), (30, 1), (2, 2), (96, 97)])]
    for energy in (0.7, 0.95):
        result = ops.lowrank_project(mats, energy, want_subgradient=True)
        check_all(mats, result, energy, want_subgradient=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_larger_matrices_match_svd(device, dtype):
    """Sizes past the CUDA shared-memory eigensolver (k > 112), ImageNet-like channel shapes; on
    the CPU, Gram matrices on both paths past 1024 columns (own kernel at 100 x 2000, BLAS at
    256 x 1152)."""
    mats = [decaying(150, 300, 20.0, dtype, 21, device), decaying(256, 1152, 32.0, dtype, 22, device),
            decaying(200, 130, 25.0, dtype, 23, device), decaying(100, 2000, 15.0, dtype, 24, device)]
    result = ops.lowrank_project(mats, 0.99, want_subgradient=True)
    check_all(mats, result, 0.99, want_subgradient=True)
    warm = ops.lowrank_project([drift(p, 1e-3, 30 + i) for i, p in enumerate(result.projected)], 0.99,
                               bases=result.bases, want_subgradient=True)
    check_all([drift(p, 1e-3, 30 + i) for i, p in enumerate(result.projected)], warm, 0.99, want_subgradient=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_threshold_and_max_rank(device, dtype):
    mats = mixed_list(dtype, device, seed=3)
    for value_threshold, max_rank in [(0.5, None), (None, 3), (0.2, 5), (0.0, 0), (10.0, None), (math.inf, None)]:
        result = ops.lowrank_project(mats, 0.95, value_threshold, max_rank, want_subgradient=True)
        check_all(mats, result, 0.95, value_threshold, max_rank, want_subgradient=True)
        if max_rank is not None:
            assert int(result.ranks.max()) <= max_rank


def test_hand_example(device):
    # Singular values 3, 2, 1 along known directions: energies 9, 13, 14 of 14. Each energy asked
    # for sits 1e-3 off a cumulative energy: an exact tie (9 / 14) lies inside the contract's
    # 1e-6 band, where the rank may go either way with the rounding of the Gram (it does between
    # the AVX2 and the portable kernels). energy_rank's own hand examples test exact ties.
    u, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    w = ((u * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T).to(device)
    for energy, rank in [(8.99 / 14, 1), (9.01 / 14, 2), (12.99 / 14, 2), (13.01 / 14, 3), (0.95, 3)]:
        result = ops.lowrank_project([w], energy, want_subgradient=True)
        assert int(result.ranks[0]) == rank
        expected = (u[:, :rank] * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)[:rank]) @ v[:, :rank].T
        torch.testing.assert_close(result.projected[0].cpu(), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(result.subgradients[0].cpu(), u[:, :rank] @ v[:, :rank].T, rtol=0, atol=1e-12)
    assert int(ops.lowrank_project([w], 0.99, value_threshold=1.5).ranks[0]) == 2
    assert int(ops.lowrank_project([w], 0.99, max_rank=1).ranks[0]) == 1


def test_the_rank_band_admits_ties_and_nothing_else():
    # Energies 0, 1, 1.25 for ranks 0, 1, 2. At energy 0.8 (target 1.0, an exact tie at rank 1)
    # ranks 1 and 2 are both right; at 0.7 or 0.9 only one is.
    s = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert energy_band_ok(s, 0.8, 1, 2) and energy_band_ok(s, 0.8, 2, 1)
    assert not energy_band_ok(s, 0.7, 1, 2) and not energy_band_ok(s, 0.9, 1, 2)
    assert not energy_band_ok(s, 0.8, 0, 2)  # rank 0's energy is nowhere near the target
    assert energy_band_ok(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 1 / 3, 0, 1) is False
    # Near the float64 limit the squares overflow unless normalised first.
    assert energy_band_ok(torch.ldexp(s, torch.tensor(1022)), 0.8, 2, 1)
    # The tie through the whole check: rank 1 or 2, whichever way the kernel rounds.
    u, _ = torch.linalg.qr(torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    w = (u * s) @ v.T
    check_all([w], ops.lowrank_project([w], 0.8), 0.8)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_and_degenerate_shapes(device, dtype):
    mats = [torch.zeros(8, 20, dtype=dtype, device=device), torch.zeros(1, 1, dtype=dtype, device=device),
            torch.zeros(0, 5, dtype=dtype, device=device), torch.zeros(4, 0, dtype=dtype, device=device),
            gaussian(1, 9, dtype, 1, device), gaussian(9, 1, dtype, 2, device),
            torch.full((1, 1), -2.5, dtype=dtype, device=device)]
    result = ops.lowrank_project(mats, 0.9, want_subgradient=True)
    assert result.ranks.tolist() == [0, 0, 0, 0, 1, 1, 1]
    for mat, p, sub, basis in zip(mats, result.projected, result.subgradients, result.bases):
        assert p.shape == mat.shape and sub.shape == mat.shape
        assert torch.isfinite(p).all() and torch.isfinite(sub).all()
        assert basis.shape[0] == min(mat.shape)
    for i in range(4):
        assert result.projected[i].abs().sum() == 0 and result.subgradients[i].abs().sum() == 0
    for i in (4, 5, 6):  # rank-one matrices are their own projection; U V^T = W / ||W||
        torch.testing.assert_close(result.projected[i], mats[i])
        torch.testing.assert_close(result.subgradients[i], mats[i] / mats[i].norm())
    # The bases of zero matrices are empty and warm-start nothing: those matrices stay cold.
    again = ops.lowrank_project(mats, 0.9, bases=result.bases)
    assert again.ranks.tolist() == result.ranks.tolist()


def test_extreme_magnitudes_float64(device):
    base = decaying(24, 40, 4.0, torch.float64, 5, device)
    for scale in (1e-300 * 2.0 ** -40, 1e-200, 1e-30, 1e30, 1e200):  # the first is subnormal-only
        mats = [base * scale]
        result = ops.lowrank_project(mats, 0.95, value_threshold=0.05 * scale, want_subgradient=True)
        # Checked after an exact power-of-two rescaling: the reference's own sums would under- or
        # overflow, and the contract is scale-invariant.
        e = torch.tensor(-round(math.log2(scale)), device=device)
        check(torch.ldexp(mats[0], e), torch.ldexp(result.projected[0], e), int(result.ranks[0]), 0.95,
              math.ldexp(0.05 * scale, int(e)), None, result.subgradients[0])
        assert torch.isfinite(result.bases[0]).all()
        assert int(result.ranks[0]) == int(ops.lowrank_project([base], 0.95, 0.05).ranks[0])


def test_tiny_float32_matrices_keep_a_finite_subgradient(device):
    """U_r V_r^T does not depend on the scale: a float32 matrix whose singular values lie near and
    below float32's smallest normal number (where 1 / s_1 overflows float32) gives the
    sub-gradient of the same matrix at unit scale, to the precision its subnormal entries keep."""
    base = decaying(24, 40, 4.0, torch.float32, 8, device)
    reference = ops.lowrank_project([base], 0.95, want_subgradient=True)
    for scale in (2.0 ** -120, 2.0 ** -128, 2.0 ** -132):
        tiny = base * scale
        result = ops.lowrank_project([tiny], 0.95, want_subgradient=True)
        assert result.ranks.tolist() == reference.ranks.tolist(), scale
        assert torch.isfinite(result.subgradients[0]).all(), scale
        torch.testing.assert_close(result.subgradients[0], reference.subgradients[0], rtol=0, atol=1e-3)
        torch.testing.assert_close(result.projected[0] / scale, reference.projected[0], rtol=0, atol=1e-3)


@pytest.mark.parametrize("n", [31, 63])
def test_float32_subgradient_with_small_kept_values(device, n):
    # Clusters of singular values down to 1e-5 s_1, all kept (energy 1): the float32 products
    # divided by those values missed the sub-gradient's 1e-3 by up to 3.5x (found by fuzzing).
    gen = torch.Generator().manual_seed(n)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    levels = torch.tensor([1.0, 1e-2, 1e-3, 1e-5], dtype=torch.float64).repeat_interleave(n // 4 + 1)[:n]
    s = levels * (1 + 1e-4 * torch.rand(n, generator=gen, dtype=torch.float64))
    mat = ((u * s.sort(descending=True).values) @ v.T).float().to(device)
    check_all([mat], ops.lowrank_project([mat], 1.0, want_subgradient=True), 1.0, want_subgradient=True)


def test_float64_cut_among_tiny_singular_values(device):
    # Clusters at 1, 1e-2, 1e-4, 1e-6 and 2e-7 (found by fuzzing): the rank cuts between the last
    # two, whose squares the float64 Gram separates by ~1e-12 of lambda_1 against its rounding of
    # ~1e-14: errors of 9e-9 from the Gram. Both kernels solve such float64 matrices again by an
    # SVD of A itself (needs_svd_refinement).
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(49, 48, generator=gen, dtype=torch.float64))
    s = torch.tensor([1.0] * 6 + [1e-2] * 6 + [1e-4] * 6 + [1e-6] * 16 + [2e-7] * 14, dtype=torch.float64)
    mat = ((u * s) @ v.T).to(device)
    check_all([mat], ops.lowrank_project([mat], 1.0), 1.0)


def test_float64_cut_inside_a_cluster_near_1e3(device):
    # Found by fuzzing with the checker: clusters at 1, 1e-3 (12 values within 1e-3 of each
    # other) and 1e-6 s_1, energy 0.999999 cutting inside the middle one. From the float64 Gram
    # the projection erred 1.5e-9 of ||W||; both kernels refine such cuts (below 1e-2 s_1) by an
    # SVD of the matrix.
    gen = torch.Generator().manual_seed(7)
    u, _ = torch.linalg.qr(torch.randn(69, 69, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(83, 69, generator=gen, dtype=torch.float64))
    s = torch.tensor([1.0] * 8 + [1e-3] * 12 + [1e-6] * 49, dtype=torch.float64)
    s = (s * (1 + 1e-3 * torch.rand(69, generator=gen, dtype=torch.float64))).sort(descending=True).values
    mat = ((u * s) @ v.T).to(device)
    check_all([mat], ops.lowrank_project([mat], 0.999999), 0.999999)


def test_rank_deficient_and_repeated_values(device):
    gen = torch.Generator().manual_seed(4)
    low = (torch.randn(40, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 70, generator=gen, dtype=torch.float64))
    for mats in ([low.to(device)], [low.float().to(device)]):
        for energy in (0.6, 0.999, 1.0):
            result = ops.lowrank_project(mats, energy, want_subgradient=True)
            check_all(mats, result, energy, want_subgradient=True)
    assert int(ops.lowrank_project([low.to(device)], 1.0).ranks[0]) == 3


def test_energy_one_gives_the_numerical_rank(device):
    """At energy 1 the rank of a rank-deficient float64 matrix is its numerical rank, as with a
    float64 SVD: the rounding noise of the Gram's null space must not count as energy."""
    for (m, n) in [(40, 70), (70, 40), (96, 96), (64, 576)]:
        for seed in range(12):
            gen = torch.Generator().manual_seed(100 + seed)
            r = 1 + seed % 6
            low = torch.randn(m, r, generator=gen, dtype=torch.float64) @ torch.randn(r, n, generator=gen, dtype=torch.float64)
            assert int(ops.lowrank_project([low.to(device)], 1.0).ranks[0]) == r, (m, n, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cut_inside_a_cluster_of_equal_values(device, dtype):
    """All singular values equal: any rank-r projection onto r of them is a best one (P_exact is
    not unique), so check Eckart-Young optimality and that U_r V_r^T is a partial isometry."""
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    flat = (2.0 * q[:, :20].T).to(dtype=dtype, device=device)  # 20 x 30, all singular values 2
    tol = 10 * torch.finfo(dtype).eps * 30
    for energy, rank in [(0.6, 12), (0.05, 1), (1.0, 20)]:
        result = ops.lowrank_project([flat], energy, want_subgradient=True)
        assert int(result.ranks[0]) == rank
        a, p, sub = flat.cpu().double(), result.projected[0].cpu().double(), result.subgradients[0].cpu().double()
        assert abs(float((a - p).norm() ** 2) - 4.0 * (20 - rank)) <= tol * 80
        assert abs(float(p.norm() ** 2) - 4.0 * rank) <= tol * 80
        torch.testing.assert_close(p, 2.0 * sub, rtol=0, atol=tol * 10)  # P = U_r S_r V_r^T, S_r = 2
        torch.testing.assert_close(sub @ sub.T @ sub, sub, rtol=0, atol=tol * 10)


def test_non_contiguous_inputs(device):
    mats = [decaying(30, 50, 5.0, torch.float32, 6, device).t(), gaussian(40, 40, torch.float32, 7, device)[::2, 1::3]]
    assert not mats[0].is_contiguous() and not mats[1].is_contiguous()
    result = ops.lowrank_project(mats, 0.9, want_subgradient=True)
    check_all(mats, result, 0.9, want_subgradient=True)
    for p in result.projected:
        assert p.is_contiguous()


def test_inputs_are_not_modified(device):
    mats = mixed_list(torch.float32, device)
    copies = [m.clone() for m in mats]
    result = ops.lowrank_project(mats, 0.9)
    bases = [b.clone() for b in result.bases]
    ops.lowrank_project(mats, 0.9, bases=result.bases, want_subgradient=True)
    for m, c in zip(mats, copies):
        assert torch.equal(m, c)
    for b, c in zip(result.bases, bases):
        assert torch.equal(b, c)


# ----------------------------------------------------------------------------- warm starts
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_projection", [True, False])
def test_warm_start_matches_cold(device, dtype, from_projection):
    mats = warm_list(dtype, device, seed=8) + mixed_list(dtype, device, seed=8)
    eligible = sum(min(m.shape) >= 48 for m in mats)
    first = ops.lowrank_project(mats, 0.95)
    # TRP's step(): the projected weights, then a few SGD steps; or weights that were not projected.
    start = first.projected if from_projection else mats
    moved = [drift(m, 1e-3, 100 + i) for i, m in enumerate(start)]
    ops.lowrank_project_stats(reset=True)
    warm = ops.lowrank_project(moved, 0.95, bases=first.bases, want_subgradient=True)
    stats = ops.lowrank_project_stats(reset=True)
    check_all(moved, warm, 0.95, want_subgradient=True)
    cold = ops.lowrank_project(moved, 0.95, want_subgradient=True)
    assert counted(stats) == len(mats)
    assert stats["warm"] + stats["widened"] + stats["fallback"] >= eligible
    if from_projection:  # a spectral gap at the rank: warm starts hold (without one they may
        assert stats["warm"] + stats["widened"] > 0  # fall back, which costs less than widening)
    differ = (warm.ranks != cold.ranks).nonzero().flatten().tolist()
    for i in differ:  # only where the energy sits within the band of the threshold
        s = torch.linalg.svdvals(moved[i].cpu().double())
        assert energy_band_ok(s, 0.95, int(warm.ranks[i]), int(cold.ranks[i]))


@pytest.mark.parametrize("exponent", [254, 255, -255, -256])
def test_warm_start_of_float64_matrices_near_the_rescaling_limit(device, exponent):
    """Float64 matrices up to 2^+-256 were left unscaled: from 2^254 on, the Gram's squared
    norm overflowed and no warm start could be certified (all fell back to cold), and near
    2^-256 it fell among the subnormals, so warm starts certified too early and missed the cold
    result by ~5e-10 of ||W||, over the float64 floor of 1e-10."""
    base = [m / m.abs().max() * 1.5 for m in warm_list(torch.float64, device, seed=30)[:3]]
    mats = [torch.ldexp(m, torch.tensor(exponent, device=device)) for m in base]  # max|a| = 1.5 * 2^e
    first = ops.lowrank_project(mats, 0.95)
    moved = [drift(p, 1e-3, 40 + i) for i, p in enumerate(first.projected)]
    ops.lowrank_project_stats(reset=True)
    warm = ops.lowrank_project(moved, 0.95, bases=first.bases)
    stats = ops.lowrank_project_stats(reset=True)
    cold = ops.lowrank_project(moved, 0.95)
    assert stats["fallback"] == 0 and stats["warm"] + stats["widened"] == len(mats), stats
    assert warm.ranks.tolist() == cold.ranks.tolist()
    for w, c in zip(warm.projected, cold.projected):
        assert float((w - c).norm() / c.norm()) <= FLOOR[torch.float64]


def test_warm_start_chain_like_trp(device):
    """Repeated projections with drift in between, each warm-started from the previous bases."""
    mats = warm_list(torch.float32, device, seed=9)
    result = ops.lowrank_project(mats, 0.99)
    ops.lowrank_project_stats(reset=True)
    for step in range(4):
        mats = [drift(p, 3e-3, 1000 * step + i) for i, p in enumerate(result.projected)]
        result = ops.lowrank_project(mats, 0.99, bases=result.bases, want_subgradient=True)
        check_all(mats, result, 0.99, want_subgradient=True)
    stats = ops.lowrank_project_stats()
    assert stats["warm"] + stats["widened"] + stats["fallback"] == 4 * len(mats)
    assert stats["warm"] >= 2 * len(mats)
    assert stats["warm_iterations"] >= stats["warm"]


def test_bases_narrow_to_a_spectral_gap(device):
    """After a projection the spectrum has a gap at the projected rank (the rest is drift), and
    the returned bases keep no columns past it: rank + rank / 4 columns without a gap, at most the
    gap's width with one, on both devices (CUDA returned the gapless width always). Warm starts from
    the wide bases and from the narrow ones hold (no widening, no fallback) and stay exact."""
    def default_width(rank, k):
        return min(k, rank + max(4, (rank + 3) // 4))

    mats = [decaying(192, 192, 24.0, torch.float32, 40 + i, device=device) for i in range(3)]
    first = ops.lowrank_project(mats, 0.99)
    for basis, rank in zip(first.bases, first.ranks.tolist()):
        assert basis.shape[1] == default_width(rank, 192)  # smooth spectrum: no gap
    result = first
    ops.lowrank_project_stats(reset=True)
    for step in range(3):
        previous = result
        moved = [drift(p, 1e-3, 50 * step + i) for i, p in enumerate(previous.projected)]
        result = ops.lowrank_project(moved, 0.99, bases=previous.bases, want_subgradient=True)
        check_all(moved, result, 0.99, want_subgradient=True)
        for basis, rank, gap in zip(result.bases, result.ranks.tolist(), previous.ranks.tolist()):
            assert rank + 4 <= basis.shape[1] <= max(gap, rank + 4) < default_width(rank, 192)
    stats = ops.lowrank_project_stats()
    assert stats["warm"] == 3 * len(mats) and stats["widened"] == stats["fallback"] == 0


def test_warm_starts_from_bases_wider_than_the_qr_kernel(device):
    """The batched algorithm orthonormalises bases of up to 128 columns in one kernel, wider ones
    through ATen's Cholesky and triangular solves. Bases of 117, 128 and 133 columns (shorter sides
    400, 360 and 350: one group each, and within the 0.4 k the CPU solver warm-starts from) meet
    the same contract, and on the CPU twin only the 133-column group takes ATen's path."""
    shapes = ((400, 40.0), (360, 44.0), (350, 46.0))
    mats = [decaying(n, n, tau, torch.float32, 3, device=device) for n, tau in shapes]
    first = ops.lowrank_project(mats, 0.99)
    assert [b.shape[1] for b in first.bases] == [117, 128, 133]
    moved = [drift(p, 1e-3, 60 + i) for i, p in enumerate(first.projected)]
    ops.lowrank_project_stats(reset=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        warm = ops.lowrank_project(moved, 0.99, bases=first.bases, want_subgradient=True)
    stats = ops.lowrank_project_stats(reset=True)
    check_all(moved, warm, 0.99, want_subgradient=True)
    assert stats["warm"] + stats["widened"] == 3, stats
    if device == "cpu" and not runs_cpu_solver(device):
        factorisations = sum(e.name == "aten::linalg_cholesky_ex" for e in prof.events())
        assert factorisations == 6  # one group: its first QR and two power steps, two passes each


def test_rank_deficient_basis_falls_back_to_cold(device):
    """A basis with a repeated column is no basis: its Cholesky QR fails (or leaves it far from
    orthonormal), so no warm result may stand, and the cold solve gives the right one."""
    for dtype in (torch.float32, torch.float64):
        mats = [decaying(96, 200, 8.0, dtype, 5, device=device), decaying(64, 64, 6.0, dtype, 6, device=device)]
        bases = [b.clone() for b in ops.lowrank_project(mats, 0.95).bases]
        for b in bases:
            b[:, 1] = b[:, 0]
        ops.lowrank_project_stats(reset=True)
        result = ops.lowrank_project(mats, 0.95, bases=bases, want_subgradient=True)
        stats = ops.lowrank_project_stats(reset=True)
        check_all(mats, result, 0.95, want_subgradient=True)
        assert stats["fallback"] == 2 and stats["warm"] == stats["widened"] == 0, stats


def test_small_matrices_count_once(device):
    """Every matrix is counted once, whichever way it was solved."""
    mats = mixed_list(torch.float32, device, seed=10)
    result = ops.lowrank_project(mats, 0.9)
    ops.lowrank_project_stats(reset=True)
    ops.lowrank_project([drift(m, 1e-3, 7) for m in mats], 0.9, bases=result.bases)
    assert counted(ops.lowrank_project_stats(reset=True)) == len(mats)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("caps", [{}, {"value_threshold": 0.05, "max_rank": 9}])
def test_cpu_results_do_not_depend_on_the_other_matrices(dtype, caps):
    """The CPU kernel solves a few cold matrices at a time, their eigenvalue iterations
    interleaved, and reuses its per-group results between groups: every matrix of a list must
    come out bitwise as it does among 1 x 1 zero matrices (at the same index, which seeds the
    random columns of a widened basis), cold and warm, zero and tiny matrices included. One
    thread: with more, a call's float32 products may run on MKL's threads outside the workers,
    whose rounding differs."""
    mats = mixed_list(dtype, "cpu", seed=30) + warm_list(dtype, "cpu", seed=40)
    mats += [torch.zeros(40, 50, dtype=dtype), decaying(60, 200, 6.0, dtype, seed=41), decaying(1, 9, 1.0, dtype, seed=42)]
    mats += [decaying(192, 192, 24.0, dtype, seed=43 + i) for i in range(5)]
    filler, filler_basis = torch.zeros(1, 1, dtype=dtype), torch.zeros(1, 0, dtype=dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = ops.lowrank_project(mats, 0.9, want_subgradient=True, **caps)
        moved = [drift(m, 1e-3, 70 + i) for i, m in enumerate(mats)]
        for bases in (None, first.bases):  # cold, then warm starts (and cold small matrices)
            whole = ops.lowrank_project(moved, 0.9, bases=bases, want_subgradient=True, **caps)
            for i, m in enumerate(moved):
                among = [filler] * len(moved)
                among[i] = m
                among_bases = None
                if bases is not None:
                    among_bases = [filler_basis] * len(moved)
                    among_bases[i] = bases[i]
                alone = ops.lowrank_project(among, 0.9, bases=among_bases, want_subgradient=True, **caps)
                assert int(alone.ranks[i]) == int(whole.ranks[i]), i
                for name in ("projected", "subgradients", "bases"):
                    assert torch.equal(getattr(alone, name)[i], getattr(whole, name)[i]), (name, i)
    finally:
        torch.set_num_threads(threads)


def test_bad_warm_basis_is_widened_or_falls_back(device):
    """A basis narrower than the rank, along the weakest directions: it cannot hold the energy
    without widening, so no plain warm result may be certified, and the results stay right."""
    for dtype in (torch.float32, torch.float64):
        mats = [decaying(64, 200, 6.0, dtype, 11, device), decaying(80, 80, 4.0, dtype, 12, device)]
        bases = []
        for m in mats:
            u, _, _ = torch.linalg.svd(m.cpu().double(), full_matrices=False)
            bases.append(u[:, -3:].to(dtype=dtype, device=device).contiguous())  # ranks here are 7 and 5
        ops.lowrank_project_stats(reset=True)
        result = ops.lowrank_project(mats, 0.9, bases=bases, want_subgradient=True)
        stats = ops.lowrank_project_stats(reset=True)
        check_all(mats, result, 0.9, want_subgradient=True)
        assert stats["warm"] == 0 and stats["widened"] + stats["fallback"] == 2


def test_narrow_basis_is_widened(device):
    """The top 3 singular vectors of a rank-5 problem: they cannot hold the energy, but widened
    by random columns and iterated they can (the CPU widens; CUDA falls back to cold)."""
    mats = [decaying(200, 400, 4.0, torch.float32, 13, device)]
    u, _, _ = torch.linalg.svd(mats[0].cpu().double(), full_matrices=False)
    ops.lowrank_project_stats(reset=True)
    result = ops.lowrank_project(mats, 0.9, bases=[u[:, :3].float().to(device)], want_subgradient=True)
    stats = ops.lowrank_project_stats(reset=True)
    check_all(mats, result, 0.9, want_subgradient=True)
    assert int(result.ranks[0]) == 5
    assert stats["warm"] == 0
    assert stats["widened" if runs_cpu_solver(device) else "fallback"] == 1


def test_energy_one_and_empty_bases_count_as_cold(device):
    mats = mixed_list(torch.float32, device)[:3]
    result = ops.lowrank_project(mats, 0.9)
    ops.lowrank_project_stats(reset=True)
    ops.lowrank_project(mats, 1.0, bases=result.bases)
    ops.lowrank_project(mats, 0.9, bases=[b[:, :0] for b in result.bases])
    stats = ops.lowrank_project_stats(reset=True)
    assert stats == {"cold": 6, "warm": 0, "widened": 0, "fallback": 0, "warm_iterations": 0}


def test_cpu_solves_cold_from_a_basis_wider_than_0_4_of_the_matrix():
    """Early in training TRP's ranks reach 0.6-0.9 k, and warm starts from bases wider than ~0.4 k
    took longer than cold solves (bench/RESULTS.md): the CPU solves those cold, exactly as without
    a basis."""
    mats = [decaying(96, 96, 60.0, torch.float32, 21), decaying(96, 96, 8.0, torch.float32, 22)]
    first = ops.lowrank_project(mats, 0.99)
    widths = [b.shape[1] for b in first.bases]
    assert widths[0] > 0.4 * 96 >= widths[1]  # one basis wider than 0.4 of k = 96, one not
    moved = [drift(p, 1e-3, 30 + i) for i, p in enumerate(first.projected)]
    ops.lowrank_project_stats(reset=True)
    warm = ops.lowrank_project(moved, 0.99, bases=first.bases)
    stats = ops.lowrank_project_stats(reset=True)
    assert stats["cold"] == 1 and stats["warm"] == 1
    cold = ops.lowrank_project(moved[:1], 0.99)
    assert torch.equal(warm.projected[0], cold.projected[0]) and torch.equal(warm.bases[0], cold.bases[0])


def test_stats_reset():
    ops.lowrank_project([torch.randn(4, 6)], 0.9)
    assert ops.lowrank_project_stats(reset=True)["cold"] >= 1
    assert ops.lowrank_project_stats() == {"cold": 0, "warm": 0, "widened": 0, "fallback": 0, "warm_iterations": 0}


# ----------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("want_subgradient", [False, True])
def test_opcheck(device, warm, want_subgradient):
    mats = [decaying(12, 30, 3.0, torch.float32, 1, device), gaussian(9, 4, torch.float32, 2, device),
            torch.zeros(3, 5, device=device)]
    bases = ops.lowrank_project(mats, 0.9).bases if warm else None
    torch.library.opcheck(torch.ops.trp_ext.lowrank_project, (mats, 0.9, 0.01, 6, bases, want_subgradient))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_nonfinite_matrix_raises_naming_its_index(device, bad_value):
    mats = [torch.ones(3, 4, device=device), torch.ones(5, 2, device=device), torch.ones(6, 6, device=device)]
    mats[2][4, 1] = bad_value
    with pytest.raises(ValueError, match="argument 'mats' has a NaN or Inf value in matrix 2"):
        ops.lowrank_project(mats, 0.9)


@pytest.mark.parametrize("energy", [0.9, 1.0])  # at 1.0 no warm start reads the bases: still checked
def test_nonfinite_basis_raises_naming_its_index(device, energy):
    mats = [gaussian(6, 9, torch.float32, 1, device), gaussian(7, 3, torch.float32, 2, device)]
    bases = [b.clone() for b in ops.lowrank_project(mats, 0.9).bases]
    bases[1][0, 0] = math.nan
    with pytest.raises(ValueError, match="argument 'bases' has a NaN or Inf value in basis 1"):
        ops.lowrank_project(mats, energy, bases=bases)


def test_empty_list_raises(device):
    with pytest.raises(ValueError, match="argument 'mats' must hold at least one matrix"):
        ops.lowrank_project([], 0.9)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_non_matrix_raises(device, shape):
    with pytest.raises(ValueError, match="argument 'mats' must hold 2-D tensors, got shape .* at index 1"):
        ops.lowrank_project([torch.ones(2, 2, device=device), torch.ones(shape, device=device)], 0.9)


def test_wrong_dtypes_raise(device):
    with pytest.raises(TypeError, match="argument 'mats' must hold float32 or float64 tensors, got Long"):
        ops.lowrank_project([torch.ones(2, 2, dtype=torch.long, device=device)], 0.9)
    with pytest.raises(TypeError, match="must hold tensors of one dtype, got Float at index 0 and Double at index 1"):
        ops.lowrank_project([torch.ones(2, 2, device=device), torch.ones(2, 2, dtype=torch.float64, device=device)], 0.9)


def test_mixed_devices_raise(device):
    other = "meta" if device == "cpu" else "cpu"
    with pytest.raises(ValueError, match="argument 'mats' must hold tensors on one device"):
        ops.lowrank_project([torch.ones(2, 2, device=device), torch.ones(2, 2, device=other)], 0.9)


def test_float32_matrices_near_the_float32_limit_stay_finite(device):
    # The float32 products U_r^T A passed FLT_MAX for a finite matrix: Inf projections and
    # sub-gradients came back without an error.
    for value, shape in ((2e38, (10, 8)), (5e37, (100, 80))):
        mat = torch.full(shape, value, device=device)
        result = ops.lowrank_project([mat], 0.9, want_subgradient=True)
        assert result.ranks.tolist() == [1]
        torch.testing.assert_close(result.projected[0], mat, rtol=1e-5, atol=0)
        torch.testing.assert_close(result.subgradients[0], torch.full_like(mat, 1 / math.sqrt(mat.numel())),
                                   rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape,exponent,energy", [((2, 700), -144, 1.0), ((64, 200), -136, 0.99),
                                                   ((200, 64), -136, 0.99), ((49, 49), -130, 0.99)])
def test_float32_matrices_among_the_subnormals_meet_the_contract(device, shape, exponent, energy):
    # Below ~2^-100 the float32 products rounded onto the subnormal grid: errors up to 14x a float32
    # SVD's. Compared in units of 2^exponent (exact), where the float64 norms are well scaled.
    base = decaying(*shape, 4.0, torch.float64, 3) if energy < 1 else gaussian(*shape, torch.float64, 3)
    mat = torch.ldexp(base, torch.tensor(exponent)).float().to(device)
    result = ops.lowrank_project([mat], energy)
    rank = int(result.ranks[0])
    a = torch.ldexp(mat.cpu().double(), torch.tensor(-exponent))
    u, s, vh = ref.svd64(a)
    assert rank == ref.select_rank(s, energy)
    exact = (u[:, :rank] * s[:rank]) @ vh[:rank]
    scaled = lambda t: torch.ldexp(t.cpu().double(), torch.tensor(-exponent))  # noqa: E731
    err = float((scaled(result.projected[0]) - exact).norm() / a.norm())
    uu, ss, vv = torch.linalg.svd(mat.cpu(), full_matrices=False)
    svd_err = float((scaled((uu[:, :rank] * ss[:rank]) @ vv[:rank]) - exact).norm() / a.norm())
    assert err <= max(2 * svd_err, FLOOR[torch.float32]), (err, svd_err)
    # No worse than rounding the exact projection to float32 (at these magnitudes, that is the error).
    rounded = float((scaled(torch.ldexp(exact, torch.tensor(exponent)).float()) - exact).norm() / a.norm())
    assert err <= 1.01 * rounded + 1e-12, (err, rounded)


@pytest.mark.parametrize("argument,value", [("energy", "0.5"), ("energy", None), ("value_threshold", "0.1"),
                                            ("max_rank", 2.9), ("max_rank", "3"), ("max_rank", True),
                                            ("want_subgradient", "no"), ("want_subgradient", 1)])
def test_arguments_are_checked_not_converted(argument, value):
    # float("0.5") and int(2.9) ran another rule than the one asked for; bool("no") is True.
    kwargs = {"energy": 0.9, argument: value}
    with pytest.raises(ValueError, match=f"argument '{argument}'"):
        ops.lowrank_project([torch.ones(3, 3)], **kwargs)


def test_backward_through_it_says_it_is_not_differentiable():
    # Without an autograd kernel the outputs of inputs that require grad required grad too, and
    # backward silently dropped the dependence.
    mat = torch.randn(5, 4, requires_grad=True)
    result = ops.lowrank_project([mat], 0.9)
    with pytest.raises(RuntimeError, match="lowrank_project\\(\\) is not differentiable"):
        result.projected[0].sum().backward()
    with torch.no_grad():
        assert not ops.lowrank_project([mat], 0.9).projected[0].requires_grad


@pytest.mark.parametrize("energy", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_bad_energy_raises(device, energy):
    with pytest.raises(ValueError, match="argument 'energy' must lie in"):
        ops.lowrank_project([torch.ones(2, 2, device=device)], energy)


def test_bad_caps_raise(device):
    mats = [torch.ones(2, 2, device=device)]
    with pytest.raises(ValueError, match="argument 'max_rank' must be None or >= 0, got -1"):
        ops.lowrank_project(mats, 0.9, max_rank=-1)
    for value in (-0.1, math.nan):
        with pytest.raises(ValueError, match="argument 'value_threshold' must be None or >= 0"):
            ops.lowrank_project(mats, 0.9, value_threshold=value)


def test_mismatched_bases_raise(device):
    mats = [gaussian(6, 9, torch.float32, 1, device), gaussian(7, 3, torch.float32, 2, device)]
    bases = ops.lowrank_project(mats, 0.9).bases
    with pytest.raises(ValueError, match="argument 'bases' must hold one basis per matrix"):
        ops.lowrank_project(mats, 0.9, bases=bases[:1])
    with pytest.raises(ValueError, match="argument 'bases' does not fit matrix 1 of shape"):
        ops.lowrank_project(mats, 0.9, bases=[bases[0], torch.zeros(6, 2, device=device)])
    with pytest.raises(ValueError, match="argument 'bases' does not fit matrix 0"):
        ops.lowrank_project(mats, 0.9, bases=[torch.zeros(6, 7, device=device), bases[1]])
    with pytest.raises(ValueError, match="argument 'bases' does not fit matrix 0"):
        ops.lowrank_project(mats, 0.9, bases=[torch.zeros(6, device=device), bases[1]])
    with pytest.raises(TypeError, match="argument 'bases' must match the dtype of 'mats'"):
        ops.lowrank_project(mats, 0.9, bases=[bases[0].double(), bases[1]])
    # The bases of another list of shapes do not fit.
    other = ops.lowrank_project([gaussian(9, 6, torch.float32, 3, device), mats[0]], 0.9).bases
    with pytest.raises(ValueError, match="argument 'bases' does not fit matrix 1"):
        ops.lowrank_project(mats, 0.9, bases=other)


# Variables that switch the CPU kernel's float64 products (or its vector loops) onto another
# path. The kernel reads them once per process, hence a subprocess each.
PRODUCT_PATHS = {
    # The portable build of every vector loop (the eigensolver's four-lane inverse iteration
    # included), as on a CPU without AVX2: ATEN_CPU_CAPABILITY=default switches ours off too.
    "portable": {"ATEN_CPU_CAPABILITY": "default"},
    # The own GEMM on the AVX2 micro-kernel (16 registers) where the CPU has AVX-512 (whose
    # 32-register build the default path runs there); on an AVX2 CPU the own-GEMM path again.
    # Skipped without AVX2: ATen takes the setting without checking the CPU.
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "TRP_EXT_OWN_GEMM": "always"},
    # The BLAS/LAPACK libtorch exports, called directly when it can, else ATen's (the path of a
    # torch build that does not export them); every product there, none on the own GEMM.
    "aten": {"TRP_EXT_NO_DIRECT_BLAS": "1", "TRP_EXT_OWN_GEMM": "never"},
    # Every product through the own small-matrix GEMM, and every one through BLAS: by default
    # the size decides, so each path would otherwise meet only some of the shapes.
    "own_gemm": {"TRP_EXT_OWN_GEMM": "always"},
    "blas_gemm": {"TRP_EXT_OWN_GEMM": "never"},
}


def test_unknown_own_gemm_setting_raises():
    """A mistyped TRP_EXT_OWN_GEMM must not silently run the default."""
    code = ("import torch; from trp_ext import ops\n"
            "try:\n"
            "    ops.lowrank_project([torch.randn(70, 90)], 0.9)\n"
            "except RuntimeError as error:\n"
            "    print(error)\n")
    env = dict(os.environ, TRP_EXT_OWN_GEMM="alwys")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "TRP_EXT_OWN_GEMM must be 'auto', 'always' or 'never', got 'alwys'" in result.stdout, result.stderr[-2000:]


def test_lapack_inside_workers_after_a_thread_count_change():
    """The workers call LAPACK (here the SVD refinement of float64 matrices at energy 1) inside
    their parallel region. On an Intel CPU with MKL, after torch.set_num_threads(1) and (2), MKL
    once opened a nested thread team there and the call never returned (a hang, found when a
    test using the one-thread fixture ran before this one); the workers now ask MKL for one
    thread each. In a subprocess, so that a hang fails the test instead of the run."""
    code = ("import sys, torch; sys.path.insert(0, %r)\n"
            "from test_lowrank_project import mixed_list\n"
            "from trp_ext import ops\n"
            "torch.set_num_threads(1); torch.set_num_threads(2)\n"
            "mats = mixed_list(torch.float64, 'cpu')\n"
            "print(ops.lowrank_project(mats, 1.0, want_subgradient=True).ranks.tolist())\n"
            % os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    mats = mixed_list(torch.float64, "cpu")
    assert result.stdout.strip() == str(ops.lowrank_project(mats, 1.0, want_subgradient=True).ranks.tolist())


@pytest.mark.parametrize("path", sorted(PRODUCT_PATHS))
def test_every_product_path_meets_the_same_contract(path):
    """Run the core checks with the kernel's products on each path."""
    variables = PRODUCT_PATHS[path]
    if all(os.environ.get(name) == value for name, value in variables.items()):
        pytest.skip("this process is already on that path")
    if variables.get("ATEN_CPU_CAPABILITY") == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, **variables)
    selection = "cpu and (match_svd or warm_start or widened or rank_deficient or numerical_rank)"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


# ----------------------------------------------------------------------------- device operations
def _network_weights(arch, scheme):
    """Matrices of the network's layer shapes with decaying spectra (the benches' synthetic sets):
    after a projection and a drift, their warm starts hold, as in TRP's step()."""
    shapes = [tuple(ref.conv_weight_to_matrix(m.weight.detach(), scheme).shape)
              for _, m in select_layers(build_model(arch))]
    return [decaying(m, n, min(m, n) / 8, seed=i) for i, (m, n) in enumerate(shapes)]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_batched_device_operations_do_not_grow_with_the_matrices(scheme):
    """The CUDA kernel's algorithm issues a fixed number of device operations per call, whatever
    the number of matrices: ResNet-20 and ResNet-56 (18 and 54 matrices, the same shape groups)
    cost the same, cold and warm, counted on the CPU twin (bench/op_count.py). The counts also stay
    within a budget: 60-63 cold and 134 warm when written (274 and 813 device operations were
    measured on the H200 for ResNet-56 channel before the batched kernels), and each is a launch
    the GPU's host pays for."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import op_count

    counts = {}
    for arch in ("resnet20", "resnet56"):
        mats = _network_weights(arch, scheme)
        first = ops.lowrank_project(mats, 0.99)
        moved = [drift(p, 1e-3, i) for i, p in enumerate(first.projected)]
        ops.lowrank_project_stats(reset=True)
        counts[arch] = (op_count.count_ops(lambda: ops.lowrank_project(moved, 0.99))[None],
                        op_count.count_ops(lambda: ops.lowrank_project(moved, 0.99, bases=first.bases))[None])
        stats = ops.lowrank_project_stats(reset=True)
        assert stats["fallback"] == 0 and stats["warm"] == len(mats), stats  # TRP's usual step
    assert counts["resnet20"] == counts["resnet56"], counts
    cold, warm = counts["resnet56"]
    assert cold <= 80 and warm <= 160, counts


# ----------------------------------------------------------------------------- CUDA eigensolvers
def test_batched_eigh_switch_and_availability():
    """cuda_batched_eigh_available() is a plain bool on every build. In a build with the CUDA
    kernels, where torch has loaded its cuSOLVER, it says whether that library has the batched
    solver (cuSOLVER 11.7.1 / CUDA 12.6 on): a lookup that silently missed would leave every GPU
    run on the per-matrix torch.linalg.eigh."""
    import ctypes

    import trp_ext
    from trp_ext import _C
    available = ops.cuda_batched_eigh_available()
    assert isinstance(available, bool) and isinstance(_C.cuda_batched_eigh_calls(), int)
    if not trp_ext.cuda_kernels_built():
        assert available is False and _C.cuda_batched_eigh_calls() == 0
        return
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libcusolver.so" in line}
    if not paths:
        pytest.skip("torch has not loaded cuSOLVER in this process")
    has_symbol = any(hasattr(ctypes.CDLL(path), "cusolverDnXsyevBatched") for path in paths)
    assert available is has_symbol


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_batched_eigh_matches_torch_eigh(dtype):
    """Gram matrices past the Jacobi kernel (shorter sides 192, 150 and 130) go to cuSOLVER's
    batched solver by default and to torch.linalg.eigh with the switch off: both meet the
    contract, cold and warm, with the same ranks (but for ties in the energy band)."""
    device = "cuda"
    mats = [decaying(192, 192, 24.0, dtype, 60 + i, device) for i in range(5)]
    mats += [decaying(130, 300, 16.0, dtype, 70 + i, device) for i in range(2)] + [gaussian(150, 150, dtype, 80, device)]
    from trp_ext import _C
    torch.linalg.eigh(torch.eye(2, dtype=torch.float64, device=device))  # torch's cuSOLVER, loaded
    assert ops.cuda_batched_eigh_available()
    results = {}
    for mode in ("auto", "never"):
        before = _C.cuda_batched_eigh_calls()
        with ops.cuda_batched_eigh(mode):
            cold = ops.lowrank_project(mats, 0.95, want_subgradient=True)
            check_all(mats, cold, 0.95, want_subgradient=True)
            moved = [drift(p, 1e-3, 90 + i) for i, p in enumerate(cold.projected)]
            warm = ops.lowrank_project(moved, 0.95, bases=cold.bases, want_subgradient=True)
            check_all(moved, warm, 0.95, want_subgradient=True)
            results[mode] = cold
        solved_batched = _C.cuda_batched_eigh_calls() - before
        assert solved_batched > 0 if mode == "auto" else solved_batched == 0, (mode, solved_batched)
    a, b = results["auto"], results["never"]
    for i in (a.ranks != b.ranks).nonzero().flatten().tolist():
        r1, r2 = sorted((int(a.ranks[i]), int(b.ranks[i])))
        assert energy_band_ok(torch.linalg.svdvals(mats[i].cpu().double()), 0.95, r1, r2), i
