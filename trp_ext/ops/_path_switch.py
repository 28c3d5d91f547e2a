"""The context manager behind every path switch of the ops (``cpu_winograd``,
``cuda_pipelined_loads``, ``cuda_batched_eigh``, ...): a process-wide mode held by the C++
library, set for the block and put back on exit."""
import contextlib
from typing import Iterator

from trp_ext import _C

PATH_MODES = ("auto", "never", "always")


@contextlib.contextmanager
def path_switch(name: str, mode: str) -> Iterator[None]:
    """Runs the block with the process-wide mode of the C++ switch `name` set to `mode`; the
    previous one comes back on exit."""
    if mode not in PATH_MODES:
        raise ValueError(f"{name}(): mode must be one of {PATH_MODES}, got {mode!r}")
    switch = getattr(_C, name)
    previous = switch()
    switch(mode)
    try:
        yield
    finally:
        switch(previous)
