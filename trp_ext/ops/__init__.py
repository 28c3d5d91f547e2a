"""Typed Python wrappers of the ``torch.ops.trp_ext`` ops, one module per op.

Each module holds the op's wrapper (with its documentation), its fake kernel, which lets the op
run under ``torch.compile`` and on meta tensors, and its autograd registration where the op is
differentiable.
"""
from trp_ext import _ext  # noqa: F401  (loads the compiled library before any registration)
from trp_ext.ops.energy_rank import energy_rank
from trp_ext.ops.factored_conv2d import (cpu_channel_vectorised, cpu_channel_vectorised_mode, cpu_split_images,
                                         cpu_split_images_mode, cpu_wide_vectors, cpu_wide_vectors_mode, cpu_winograd,
                                         cpu_winograd_mode, cuda_pipelined_loads, cuda_pipelined_loads_mode,
                                         factored_conv2d)
from trp_ext.ops.lowrank_project import (LowRankProjection, cpu_batched_projection, cpu_batched_projection_mode,
                                        cuda_batched_eigh, cuda_batched_eigh_available, cuda_batched_eigh_mode,
                                        lowrank_project, lowrank_project_stats)

__all__ = ["cpu_batched_projection", "cpu_batched_projection_mode", "cpu_channel_vectorised",
           "cpu_channel_vectorised_mode", "cpu_split_images", "cpu_split_images_mode", "cpu_wide_vectors",
           "cpu_wide_vectors_mode",
           "cpu_winograd", "cpu_winograd_mode", "cuda_batched_eigh", "cuda_batched_eigh_available",
           "cuda_batched_eigh_mode", "cuda_pipelined_loads", "cuda_pipelined_loads_mode", "energy_rank",
           "factored_conv2d", "lowrank_project", "lowrank_project_stats", "LowRankProjection"]
