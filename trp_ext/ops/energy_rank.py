"""energy_rank: the energy-threshold rank of rows of singular values."""
import torch

from trp_ext.lowrank import is_real


def energy_rank(s: torch.Tensor, energy: float) -> torch.Tensor:
    """Energy-threshold rank of each row of singular values.

    Args:
        s: singular values, shape ``(batch, k)`` or ``(k,)``, each row descending and
            zero-padded, float32 or float64, on CPU or CUDA.
        energy: the kept fraction of ``sum(s**2)``, in (0, 1].

    Returns:
        int64 ranks, shape ``(batch,)`` (or a 0-d tensor for 1-D ``s``): the smallest ``r`` with
        ``sum(s[:r]**2) >= energy * sum(s**2)``, accumulated in float64; 0 for an all-zero row.

    Raises:
        ValueError: ``s`` is not 1-D or 2-D, ``energy`` is outside (0, 1], or ``s`` holds NaN or
            Inf (the message names the row).
        TypeError: ``s`` is not float32 or float64.
    """
    if not is_real(energy):  # float("0.9") would be accepted
        raise ValueError(f"energy_rank(): argument 'energy' must be a number, got {energy!r}")
    if isinstance(s, torch.Tensor) and s.dim() == 1:
        return torch.ops.trp_ext.energy_rank(s.unsqueeze(0), float(energy))[0]
    return torch.ops.trp_ext.energy_rank(s, float(energy))


@torch.library.register_fake("trp_ext::energy_rank")
def _energy_rank_fake(s, energy):
    torch._check(s.dim() == 2, lambda: f"energy_rank(): argument 's' must be 2-D, got {s.dim()}-D")
    return s.new_empty((s.shape[0],), dtype=torch.long)
