"""The private _jacobi_eigh op: the CUDA lowrank_project's batched Jacobi eigensolver, and its CPU
twin, against torch.linalg.eigh in float64 (and, on a GPU, the kernel against the twin)."""
import pytest
import torch

import trp_ext  # noqa: F401  (loads the ops)

jacobi_eigh = torch.ops.trp_ext._jacobi_eigh
EPS64 = torch.finfo(torch.float64).eps


def gram_batch(batch, n, rank=None, seed=0, scale=1.0):
    """Gram matrices A A^T (n x n) of random A, of the given rank (all of n when None)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, rank or n, generator=gen, dtype=torch.float64) * scale
    return a @ a.transpose(1, 2)


def symmetric_batch(batch, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return (a + a.transpose(1, 2)) / 2


def check_decomposition(matrices, values, vectors, converged):
    """Values equal eigh's (descending) and V diag(values) V^T rebuilds each matrix, with V
    orthonormal, to a few hundred eps of the matrix's norm."""
    batch, n = matrices.shape[0], matrices.shape[1]
    assert values.shape == (batch, n) and vectors.shape == (batch, n, n) and converged.shape == (batch,)
    assert values.dtype == vectors.dtype == torch.float64 and converged.dtype == torch.bool
    assert bool(converged.all())
    a, w, v = matrices.cpu(), values.cpu(), vectors.cpu()
    if n == 0:
        return
    exact = torch.linalg.eigvalsh(a).flip(1)
    norm = torch.linalg.matrix_norm(a, ord=2).clamp_min(torch.finfo(torch.float64).tiny)
    tol = 200 * n * EPS64 * norm
    assert bool((w[:, :-1] >= w[:, 1:]).all()), "values not descending"
    assert bool(((w - exact).abs().amax(1) <= tol).all())
    rebuilt = (v * w.unsqueeze(1)) @ v.transpose(1, 2)
    assert bool(((rebuilt - a).abs().flatten(1).amax(1) <= tol).all())
    eye = torch.eye(n, dtype=torch.float64)
    assert float((v.transpose(1, 2) @ v - eye).abs().max()) <= 200 * n * EPS64


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 64, 112])
def test_matches_eigh_on_gram_and_indefinite_matrices(device, n):
    for matrices in (gram_batch(3, n, seed=n), symmetric_batch(2, n, seed=n + 1)):
        matrices = matrices.to(device)
        check_decomposition(matrices, *jacobi_eigh(matrices))


def test_rank_deficient_repeated_and_zero_matrices(device):
    """A rank-3 Gram (its null block is rounding noise, which must not keep every sweep
    rotating), a matrix with a repeated eigenvalue, the identity and zero."""
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    repeated = (q * torch.tensor([5.0] * 6 + [2.0] * 6 + [0.5] * 12, dtype=torch.float64)) @ q.T
    matrices = torch.stack([gram_batch(1, 24, rank=3, seed=6)[0], repeated, torch.eye(24, dtype=torch.float64),
                            torch.zeros(24, 24, dtype=torch.float64)]).to(device)
    values, vectors, converged = jacobi_eigh(matrices)
    check_decomposition(matrices, values, vectors, converged)
    assert torch.equal(values[3].cpu(), torch.zeros(24, dtype=torch.float64))
    assert torch.equal(vectors[3].cpu(), torch.eye(24, dtype=torch.float64))


@pytest.mark.parametrize("scale", [2.0 ** 300, 2.0 ** -300])
def test_extreme_magnitudes(device, scale):
    """Diagonals past 2^512 once overflowed the threshold's product and stopped every rotation."""
    matrices = (gram_batch(2, 20, seed=7) * scale).to(device)
    check_decomposition(matrices, *jacobi_eigh(matrices))


def test_non_contiguous_input_and_empty_batch(device):
    matrices = gram_batch(4, 10, seed=8).to(device)
    values, vectors, _ = jacobi_eigh(matrices[::2])
    contiguous = jacobi_eigh(matrices[::2].contiguous())
    assert torch.equal(values, contiguous[0]) and torch.equal(vectors, contiguous[1])
    empty = jacobi_eigh(matrices[:0])
    assert empty[0].shape == (0, 10) and empty[1].shape == (0, 10, 10) and empty[2].shape == (0,)


def test_bad_input_raises_naming_the_argument(device):
    with pytest.raises(TypeError, match="_jacobi_eigh\\(\\): argument 'matrices' must be float64"):
        jacobi_eigh(torch.eye(4, device=device).unsqueeze(0))
    with pytest.raises(ValueError, match="argument 'matrices' must be a \\(B, n, n\\) batch"):
        jacobi_eigh(torch.zeros(2, 3, 4, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="argument 'matrices' must be a \\(B, n, n\\) batch"):
        jacobi_eigh(torch.zeros(3, 3, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="past the solver's largest, 112"):
        jacobi_eigh(torch.zeros(1, 113, 113, dtype=torch.float64, device=device))


def test_opcheck(device):
    torch.library.opcheck(jacobi_eigh, (gram_batch(3, 9, seed=9).to(device),))


@pytest.mark.cuda
@pytest.mark.parametrize("n", [5, 48, 112])
def test_cuda_kernel_agrees_with_its_cpu_twin(n):
    """Both run the same rotations in the same order, so they differ only by the GPU's fused
    multiply-adds: the same values and the same vectors, to rounding (a column's sign is compared
    out: a rotation decided at its threshold could differ and flip one)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    matrices = gram_batch(6, n, seed=10 + n)
    cpu_values, cpu_vectors, cpu_converged = jacobi_eigh(matrices)
    gpu_values, gpu_vectors, gpu_converged = jacobi_eigh(matrices.cuda())
    assert torch.equal(cpu_converged, gpu_converged.cpu())
    scale = float(cpu_values.abs().max())
    assert float((gpu_values.cpu() - cpu_values).abs().max()) <= 1e3 * n * EPS64 * scale
    # Well-separated eigenvalues of random Gram matrices: vectors within ~eps / gap.
    gpu_vectors = gpu_vectors.cpu()
    signs = torch.sign((gpu_vectors * cpu_vectors).sum(1, keepdim=True))
    assert float((gpu_vectors * signs - cpu_vectors).abs().max()) <= 1e-8
