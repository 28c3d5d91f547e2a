"""bench/ncu_layers.py and bench/ncu_summary.py, which bench/gpu_check.sh runs under Nsight
Compute on a GPU: the layers must exist among the benches' own, and the summary must read ncu's
text report (the format below is the H200 run's of 2026-12-01, trimmed)."""
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import ncu_summary  # noqa: E402

REPORT = """==PROF== Connected to process 3749 (/usr/bin/python3.12)
==PROF== Profiling "factored_conv2d_kernel": 0%....50%....100% - 20 passes
==PROF== Profiling "factored_conv2d_kernel": 0%....50%....100% - 20 passes
channel 512-512 14x14 s2 r128 b32: 2 calls
==PROF== Profiling "factored_conv2d_kernel": 0%....50%....100% - 20 passes
spatial 512-512 14x14 s2 r128 b32: 2 calls
==PROF== Disconnected from process 3749
  void factored_conv2d_kernel<__half, 128, 0>(FconvArgs) (200, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Metric Name             Metric Unit Metric Value
    Memory Throughput                 %        13.30
    Duration                         us       269.89
    Compute (SM) Throughput           %         7.28
    Section: Memory Workload Analysis
    Memory Throughput                          Gbyte/s        28.91
    Section: Launch Statistics
    Cluster Size                                                   8
    Grid Size                                                    200
    Registers Per Thread             register/thread             127
    Dynamic Shared Memory Per Block      Kbyte/block           75.78
    Section: Occupancy
    Theoretical Occupancy                     %        18.75
    Achieved Occupancy                        %        10.02
  void factored_conv2d_kernel<__half, 128, 0>(FconvArgs) (200, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Duration                         us       268.61
  void factored_conv2d_kernel<__half, 128, 1>(FconvArgs) (256, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Duration                         ms         1.54
    Dynamic Shared Memory Per Block       byte/block         512
"""


def test_every_layer_is_a_bench_layer():
    # In a subprocess: the bench modules import bench/conftest.py's helpers, which this folder's
    # conftest would shadow.
    code = ("import bench_factored_conv as f, ncu_layers as n; "
            "print(sum(any((l.c, l.n, l.h, l.stride, l.kernel) == (c, o, s, st, (3, 3)) for l in f.LAYERS) "
            "and scheme in ('channel', 'spatial') for scheme, c, o, s, st in n.LAYERS), len(n.LAYERS))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=BENCH)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "4"]


def test_summary_matches_launches_to_layers(tmp_path, capsys):
    report = tmp_path / "ncu.txt"
    report.write_text(REPORT)
    ncu_summary.main(str(report))
    rows = [line.strip("|").split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0].strip(), row[1], row[2]) for row in rows] == [
        ("channel 512-512 14x14 s2 r128 b32", "factored_conv2d_kernel<__half, 128, 0>", "200,1,1"),
        ("channel 512-512 14x14 s2 r128 b32", "factored_conv2d_kernel<__half, 128, 0>", "200,1,1"),
        ("spatial 512-512 14x14 s2 r128 b32", "factored_conv2d_kernel<__half, 128, 1>", "256,1,1")]
    first = dict(zip(["layer", "kernel", "grid"] + list(ncu_summary.METRICS), (cell.strip() for cell in rows[0])))
    # the percent, not the Gbyte/s line of the same name; thousands separators dropped
    assert (first["us"], first["memory busy %"], first["SM busy %"], first["cluster"]) == ("269.89", "13.30", "7.28", "8")
    assert (first["regs"], first["smem KB"], first["occ. theor. %"], first["occ. achieved %"]) == ("127", "75.78", "18.75", "10.02")
    # units ncu scaled to the value, back in the columns' own (us, KB)
    assert (rows[2][3].strip(), rows[2][5].strip()) == ("1540.00", "0.50")


def test_summary_of_an_empty_report(tmp_path, capsys):
    report = tmp_path / "ncu.txt"
    report.write_text("==ERROR== ncu: no kernels were profiled\n")
    ncu_summary.main(str(report))
    assert capsys.readouterr().out.strip() == "ncu_summary: no kernel launches in the report"


def test_layers_script_without_a_gpu_says_so():
    if torch.cuda.is_available():
        return  # on a GPU it runs under gpu_check.sh's ncu step instead
    result = subprocess.run([sys.executable, str(BENCH / "ncu_layers.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ncu_layers: no GPU visible; nothing run"


def test_summary_labels_the_single_buffered_runs(tmp_path, capsys):
    """ncu_layers.py profiles the wide layers again with the pipeline off, printed with a
    ' single' suffix; the kernels then carry the kPipelined template argument (0 or 1)."""
    launch = ("  void factored_conv2d_kernel<__half, 128, 0, {}>(FconvArgs) (200, 1, 1)x(128, 1, 1), Context 1, "
              "Stream 7, Device 0, CC 9.0\n    Duration                         us       {}\n")
    report = tmp_path / "ncu.txt"
    report.write_text("channel 512-512 14x14 s2 r128 b32: 2 calls\n"
                      "channel 512-512 14x14 s2 r128 b32 single: 2 calls\n"
                      + launch.format(1, "40.00") + launch.format(1, "39.00")
                      + launch.format(0, "250.00") + launch.format(0, "251.00"))
    ncu_summary.main(str(report))
    rows = [line.strip("|").split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0].strip(), row[1], row[3].strip()) for row in rows] == [
        ("channel 512-512 14x14 s2 r128 b32", "factored_conv2d_kernel<__half, 128, 0, 1>", "40.00"),
        ("channel 512-512 14x14 s2 r128 b32", "factored_conv2d_kernel<__half, 128, 0, 1>", "39.00"),
        ("channel 512-512 14x14 s2 r128 b32 single", "factored_conv2d_kernel<__half, 128, 0, 0>", "250.00"),
        ("channel 512-512 14x14 s2 r128 b32 single", "factored_conv2d_kernel<__half, 128, 0, 0>", "251.00")]
