"""Loads the compiled library ``trp_ext._C``, which registers the ``torch.ops.trp_ext`` ops.

A missing library, one that fails to load (typically an undefined symbol because it was built
against another torch), or one whose recorded torch version differs from the running torch all
end in one ImportError that says how to rebuild.
"""
import importlib
import importlib.util

import torch

REBUILD_HINT = (
    "Rebuild it against the torch you run, from the trp-ext source folder:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps .\n"
    "(or `make build` in a development checkout). Build isolation must stay off, since an "
    "isolated build compiles against a different torch."
)


class ExtensionLoadError(ImportError):
    """The compiled part of trp_ext is missing, broken, or built for another torch."""


def _running_torch_version():
    release = torch.__version__.split("+")[0]
    parts = release.split(".")[:3]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def load_library():
    """Imports ``trp_ext._C`` and returns its build info ({'cuda': bool, 'torch_version': ...})."""
    # Looked up first: `from trp_ext import _C` on a missing library blames "a circular import".
    if importlib.util.find_spec("trp_ext._C") is None:
        raise ExtensionLoadError(f"trp_ext's compiled library trp_ext._C is not built.\n{REBUILD_HINT}")
    try:
        _C = importlib.import_module("trp_ext._C")
    except ImportError as error:
        raise ExtensionLoadError(
            f"trp_ext's compiled library could not be loaded ({error}). It was probably built "
            f"against a torch other than the installed torch {torch.__version__}.\n{REBUILD_HINT}"
        ) from None
    info = _C.build_info()
    built_for = tuple(info["torch_version"])
    if built_for != _running_torch_version():
        raise ExtensionLoadError(
            f"trp_ext was compiled against torch {'.'.join(map(str, built_for))}, but torch "
            f"{torch.__version__} is running.\n{REBUILD_HINT}"
        )
    return info


BUILD_INFO = load_library()
