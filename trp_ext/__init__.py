"""trp-ext: Trained Rank Pruning for PyTorch, with fast low-rank kernels.

``import trp_ext`` loads the compiled ops into ``torch.ops.trp_ext``; the typed wrappers are in
``trp_ext.ops``.
"""
from trp_ext._ext import BUILD_INFO
from trp_ext import ops  # noqa: F401  (registers fake kernels and autograd)
from trp_ext.decompose import DecomposeReport, decompose
from trp_ext.io import load_compressed, save_compressed
from trp_ext.nn import FactoredConv2d
from trp_ext.selection import select_layers
from trp_ext.trp import TRP

__version__ = "0.1.0"


def cuda_kernels_built() -> bool:
    """True when the CUDA kernels were compiled into this build of trp_ext."""
    return bool(BUILD_INFO["cuda"])


__all__ = ["cuda_kernels_built", "ops", "TRP", "decompose", "DecomposeReport", "FactoredConv2d",
           "save_compressed", "load_compressed", "select_layers"]
