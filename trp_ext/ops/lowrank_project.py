"""lowrank_project: batched truncated-SVD projection of a list of matrices of different shapes.

PLACEHOLDER until the kernel issue (#4) lands: backed by trp_ext._reference, one matrix at a time.
The signature and return type are final; callers (TRP) do not change when the kernels land.
"""
from typing import List, NamedTuple, Optional, Sequence

import torch

from trp_ext import _reference as ref


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
    """Projects every matrix onto its energy-threshold truncated SVD, in one call."""
    projected, ranks, subgradients = [], [], []
    for matrix in mats:
        p, rank = ref.lowrank_project(matrix, energy, value_threshold, max_rank)
        projected.append(p)
        ranks.append(rank)
        if want_subgradient:
            subgradients.append(ref.nuclear_subgradient(matrix, rank=rank))
    device = mats[0].device if len(mats) else torch.device("cpu")
    return LowRankProjection(projected, torch.tensor(ranks, dtype=torch.long, device=device), subgradients, [])
