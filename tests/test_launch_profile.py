"""bench/launch_profile.py, which bench/gpu_check.sh runs on a GPU: it must keep working with the
benches' own inputs. Here on the CPU (no device operations to count) and, without a GPU, its note."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "launch_profile.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_cpu_table_has_every_call():
    result = _run("--device", "cpu")
    assert result.returncode == 0, result.stderr
    calls_table, twin_table = result.stdout.split("\n\n")[:2]
    rows = [line for line in calls_table.splitlines() if line.startswith("| ") and "device ops" not in line]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert names == [f"lowrank_project resnet56/{scheme} {mode}" for scheme, modes in
                     (("channel", ("cold", "warm")), ("spatial", ("cold", "cold, torch eigh", "warm")))
                     for mode in modes] + [
        f"factored_conv2d {variant} channel {layer} b1" for layer in ("16-16 32x32 s1 r6", "512-512 7x7 s1 r128")
        for variant in ("ours", "pair")]
    for row in rows:
        device_ops, syncs, wall, host = (cell.strip() for cell in row.strip("|").split("|")[1:])
        assert (device_ops, syncs) == ("0", "0"), row
        assert 0.0 < float(host) <= float(wall), row  # on the CPU a call returns when its work is done
    # The CUDA kernel's device operations, counted on its CPU twin, with their phases.
    twin_rows = [line for line in twin_table.splitlines() if line.startswith("| ") and "device ops" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in twin_rows] == [
        f"lowrank_project resnet56/{scheme} {mode}" for scheme in ("channel", "spatial") for mode in ("cold", "warm")]
    for row in twin_rows:
        total, phases = (cell.strip() for cell in row.strip("|").split("|")[1:])
        counts = [int(part.rsplit(" ", 1)[1]) for part in phases.split(", ")]
        assert 0 < int(total) == sum(counts), row


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is for machines without a GPU")
def test_without_a_gpu_it_says_so_and_succeeds():
    result = _run()
    assert result.returncode == 0, result.stderr
    assert "no GPU visible" in result.stdout
