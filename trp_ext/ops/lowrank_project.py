"""lowrank_project: batched truncated-SVD projection of a list of matrices of different shapes.

One call projects every layer of a network (``torch.ops.trp_ext.lowrank_project``, CPU and CUDA
kernels); ``lowrank_project_stats`` reports how its warm starts fared.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

from trp_ext import _C
from trp_ext.lowrank import is_integer, is_real
from trp_ext.ops._path_switch import path_switch

STATS_FIELDS = ("cold", "warm", "widened", "fallback", "warm_iterations")


class LowRankProjection(NamedTuple):
    projected: List[torch.Tensor]  # each matrix's rank-r projection, same shape and dtype
    ranks: torch.Tensor  # int64, one rank per matrix, on the matrices' device
    subgradients: List[torch.Tensor]  # U_r V_r^T per matrix when asked for, else empty
    bases: List[torch.Tensor]  # opaque warm-start state: pass to the next call's `bases`


def lowrank_project(
    mats: Sequence[torch.Tensor],
    energy: float,
    value_threshold: Optional[float] = None,
    max_rank: Optional[int] = None,
    bases: Optional[Sequence[torch.Tensor]] = None,
    want_subgradient: bool = False,
) -> LowRankProjection:
    """Projects every matrix onto its energy-threshold truncated SVD, in one call.

    For each matrix ``W = U S V^T``, the rank ``r`` is the smallest with
    ``sum(s[:r]**2) >= energy * sum(s**2)`` (float64), lowered to the number of singular values
    ``>= value_threshold`` and to ``max_rank`` when those are given; the projection is
    ``U_r S_r V_r^T``.

    Args:
        mats: 2-D float32 or float64 tensors, one dtype and device, any shapes (one per layer).
        energy: the kept energy fraction, in (0, 1].
        value_threshold: optional; singular values below it are dropped too.
        max_rank: optional cap on every rank (>= 0).
        bases: the ``bases`` of a previous call on the same list of shapes, to warm-start from
            them (subspace iteration on the Gram matrix plus Rayleigh-Ritz). A warm result is
            certified by residual bounds to be as correct as a cold one; a basis that does not
            hold the energy is widened, and one that cannot be certified falls back to a cold
            solve. ``lowrank_project_stats`` counts how often each happens.
        want_subgradient: also return the nuclear-norm sub-gradient ``U_r V_r^T``, built from
            the kept singular values above ``max(m, n) * eps(dtype) * s_1`` and above the float64
            Gram's resolution ``sqrt(1e3 * (m + n) * eps64) * s_1`` (about ``1e-5 * s_1``).

    Returns:
        ``LowRankProjection(projected, ranks, subgradients, bases)``: ``projected[i]`` has the
        shape and dtype of ``mats[i]``; ``ranks`` is int64 on the matrices' device;
        ``subgradients`` is empty unless asked for; ``bases[i]`` is opaque state of shape
        ``(min(m, n), b)`` (``b`` depends on the rank) for the next call.

    Raises:
        ValueError: an empty list, a matrix that is not 2-D, mixed devices, ``energy`` outside
            (0, 1], a negative ``value_threshold`` or ``max_rank``, bases that do not fit the
            matrices, or NaN/Inf in a matrix or basis (the message names its index).
        TypeError: a dtype other than float32/float64, or mixed dtypes.

    Zero matrices get rank 0 and a zero projection; 1 x n and n x 1 matrices are fine. The op
    is not differentiable.

    Accuracy: float32 projections are within twice the error of ``torch.linalg.svd`` in float32,
    or ``1e-5 * ||W||``. Both kernels work from the float64 Gram matrix, which resolves singular
    values only down to about ``1e-7 * s_1``. So a float64 matrix whose rank cut lies below
    ``1e-2 * s_1``, or whose rank at ``energy=1`` the Gram's resolution sets, is solved again by
    an SVD of the matrix itself (LAPACK or cuSOLVER, through ATen), and float64 projections are
    within ``1e-10 * ||W||``. On CUDA that costs one more round of host syncs (about three) in
    a call that needs it.
    """
    mats = list(mats)
    if not mats:  # the dispatcher needs a tensor to pick a kernel; say what is wrong instead
        raise ValueError("lowrank_project(): argument 'mats' must hold at least one matrix")
    # Checked, not converted: float("0.5") and int(2.9) would run another rule than the one asked
    # for, and bool("no") is True.
    for name, value, kind in (("energy", energy, "a number"), ("value_threshold", value_threshold, "None or a number")):
        if not (is_real(value) or (value is None and name == "value_threshold")):
            raise ValueError(f"lowrank_project(): argument '{name}' must be {kind}, got {value!r}")
    if not (max_rank is None or is_integer(max_rank)):
        raise ValueError(f"lowrank_project(): argument 'max_rank' must be None or an integer, got {max_rank!r}")
    if not isinstance(want_subgradient, bool):
        raise ValueError(f"lowrank_project(): argument 'want_subgradient' must be a bool, got {want_subgradient!r}")
    projected, ranks, subgradients, new_bases = torch.ops.trp_ext.lowrank_project(
        mats,
        float(energy),
        None if value_threshold is None else float(value_threshold),
        None if max_rank is None else int(max_rank),
        None if bases is None else list(bases),
        want_subgradient,
    )
    return LowRankProjection(projected, ranks, subgradients, new_bases)


def lowrank_project_stats(reset: bool = False) -> Dict[str, int]:
    """How many matrices lowrank_project has solved each way, in this process, on any device.

    Returns ``{"cold", "warm", "widened", "fallback", "warm_iterations"}`` counts: ``cold``
    matrices solved without a usable basis (none given, an empty one, a zero matrix,
    ``energy == 1``, which needs the whole spectrum, or on the CPU a matrix whose shorter side is
    below 48, or whose basis is wider than 0.4 of it, where a cold solve is cheaper); ``warm``
    certified from the given basis; ``widened`` certified after widening it; ``fallback`` solved
    cold because the warm start could not be certified; ``warm_iterations`` the subspace
    iterations all warm starts ran.
    ``reset=True`` returns the counts and sets them to zero.
    """
    return dict(zip(STATS_FIELDS, torch.ops.trp_ext.lowrank_project_stats(bool(reset))))


def cpu_batched_projection_mode() -> str:
    """Which algorithm the CPU kernel runs: ``"auto"`` (the default) and ``"never"`` its own
    per-matrix solver; ``"always"`` the CUDA kernel's batched algorithm (shape groups, batched
    Gram matrices, the Jacobi eigensolver up to 112, a fixed number of power steps) on CPU twins of
    the CUDA kernel's own kernels, so that its results, and the tests of them, need no GPU. Both
    meet the same contract; the own solver is the faster one on a CPU."""
    return _C.cpu_batched_projection()


def cpu_batched_projection(mode: str):
    """Runs the block with the CPU kernel's algorithm set by `mode` (see
    :func:`cpu_batched_projection_mode`); the mode is process-wide, and the previous one comes
    back on exit."""
    return path_switch("cpu_batched_projection", mode)


def cuda_batched_eigh_mode() -> str:
    """How the CUDA kernel solves the Gram matrices its shared-memory Jacobi kernel cannot hold
    (shorter side above 112; in ResNet-56's spatial scheme the 192 x 192 ones): ``"auto"`` (the
    default) and ``"always"`` with cuSOLVER's batched eigensolver (``cusolverDnXsyevBatched``,
    cuSOLVER 11.7.1 / CUDA 12.6 or later), one call for a group of matrices with no host
    synchronisation, wherever the process's cuSOLVER has it; ``"never"`` with
    ``torch.linalg.eigh``, which solves such a batch one matrix at a time.
    :func:`cuda_batched_eigh_available` says whether the library has it."""
    return _C.cuda_batched_eigh()


def cuda_batched_eigh(mode: str):
    """Runs the block with the CUDA batched-eigensolver mode set to `mode` (see
    :func:`cuda_batched_eigh_mode`); the mode is process-wide, and the previous one comes back on
    exit."""
    return path_switch("cuda_batched_eigh", mode)


def cuda_batched_eigh_available() -> bool:
    """Whether this process's cuSOLVER has the batched eigensolver the CUDA kernel uses (looked up
    in the library torch loaded; False in a build without the CUDA kernels)."""
    return bool(_C.cuda_batched_eigh_available())


def _check_fake_args(mats, energy, value_threshold, max_rank, bases):
    """The shape, dtype and device checks of the kernels (csrc/common/lowrank_project_checks.h)."""
    op = "lowrank_project(): argument"
    torch._check_value(len(mats) > 0, lambda: f"{op} 'mats' must hold at least one matrix")
    first = mats[0]
    for i, mat in enumerate(mats):
        torch._check_value(mat.dim() == 2, lambda: f"{op} 'mats' must hold 2-D tensors, got shape "
                                                   f"{tuple(mat.shape)} at index {i}")
        torch._check_type(mat.dtype in (torch.float32, torch.float64),
                          lambda: f"{op} 'mats' must hold float32 or float64 tensors, got {mat.dtype} at index {i}")
        torch._check_type(mat.dtype == first.dtype, lambda: f"{op} 'mats' must hold tensors of one dtype, "
                                                            f"got {first.dtype} at index 0 and {mat.dtype} at index {i}")
        torch._check_value(mat.device == first.device, lambda: f"{op} 'mats' must hold tensors on one device, "
                                                               f"got {first.device} at index 0 and {mat.device} at index {i}")
    torch._check_value(0.0 < energy <= 1.0, lambda: f"{op} 'energy' must lie in (0, 1], got {energy}")
    torch._check_value(value_threshold is None or value_threshold >= 0.0,
                       lambda: f"{op} 'value_threshold' must be None or >= 0, got {value_threshold}")
    torch._check_value(max_rank is None or max_rank >= 0, lambda: f"{op} 'max_rank' must be None or >= 0, got {max_rank}")
    if bases is None:
        return
    torch._check_value(len(bases) == len(mats), lambda: f"{op} 'bases' must hold one basis per matrix, got "
                                                        f"{len(bases)} for {len(mats)} matrices")
    for i, (basis, mat) in enumerate(zip(bases, mats)):
        k = torch.sym_min(mat.shape[0], mat.shape[1])
        torch._check_value(basis.dim() == 2 and basis.shape[0] == k and basis.shape[1] <= k,
                           lambda: f"{op} 'bases' does not fit matrix {i} of shape {tuple(mat.shape)}")
        torch._check_type(basis.dtype == mat.dtype, lambda: f"{op} 'bases' must match the dtype of 'mats', "
                                                            f"got {basis.dtype} at index {i} for {mat.dtype}")
        torch._check_value(basis.device == mat.device, lambda: f"{op} 'bases' must be on the device of 'mats', "
                                                               f"got {basis.device} at index {i} for {mat.device}")


@torch.library.register_fake("trp_ext::lowrank_project")
def _lowrank_project_fake(mats, energy, value_threshold, max_rank, bases, want_subgradient):
    _check_fake_args(mats, energy, value_threshold, max_rank, bases)
    projected = [torch.empty_like(mat, memory_format=torch.contiguous_format) for mat in mats]
    ranks = mats[0].new_empty((len(mats),), dtype=torch.long)
    subgradients = [torch.empty_like(mat, memory_format=torch.contiguous_format)
                    for mat in mats] if want_subgradient else []
    # The basis width follows the rank: data-dependent.
    ctx = torch.library.get_ctx()
    new_bases = []
    for mat in mats:
        k = torch.sym_min(mat.shape[0], mat.shape[1])
        width = ctx.new_dynamic_size()
        torch._check(width <= k)
        new_bases.append(mat.new_empty((k, width)))
    return projected, ranks, subgradients, new_bases


def _no_backward(ctx, *grads):
    raise RuntimeError("lowrank_project() is not differentiable: it projects weights between training steps, "
                       "under torch.no_grad(); detach its inputs")


# Registered so that outputs computed from inputs that require grad say so when backpropagated
# through, instead of silently dropping the dependence (torch's fallback for an op without one).
torch.library.register_autograd("trp_ext::lowrank_project", _no_backward, setup_context=lambda ctx, inputs, output: None)


JACOBI_MAX_SIZE = 112  # csrc/common/jacobi_rotation.h's kJacobiMaxSize


@torch.library.register_fake("trp_ext::_jacobi_eigh")
def _jacobi_eigh_fake(matrices):
    """The private Jacobi eigensolver of the batched algorithm (tests call it directly)."""
    op = "_jacobi_eigh(): argument 'matrices'"
    torch._check_type(matrices.dtype == torch.float64, lambda: f"{op} must be float64, got {matrices.dtype}")
    torch._check_value(matrices.dim() == 3 and matrices.shape[1] == matrices.shape[2],
                       lambda: f"{op} must be a (B, n, n) batch of square matrices, got shape {tuple(matrices.shape)}")
    torch._check_value(matrices.shape[1] <= JACOBI_MAX_SIZE,
                       lambda: f"{op} holds matrices past the solver's largest, {JACOBI_MAX_SIZE}")
    batch, n = matrices.shape[0], matrices.shape[1]
    return (matrices.new_empty((batch, n)), matrices.new_empty((batch, n, n)),
            matrices.new_empty((batch,), dtype=torch.bool))
