"""bench/report.py: the ratio tables of bench/RESULTS.md from pytest-benchmark JSON."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import report  # noqa: E402


def _bench(group, variant, median_s, **extra):
    return {"group": group, "name": f"test[{variant}]", "fullname": f"bench::test[{group}-{variant}]",
            "stats": {"median": median_s}, "extra_info": {"variant": variant, **extra}}


@pytest.fixture
def bench_json(tmp_path):
    # One case: 5e8 factored and 1.5e9 dense multiply-adds; ours 1 ms, the pair 2 ms, dense 4 ms.
    group = "channel 16-16 32x32 s1 r6 b1"
    data = {"machine_info": {"cpu": {"brand_raw": "test CPU", "count": 2}}, "benchmarks": [
        _bench(group, "ours", 1e-3, flop_ratio=3.0, macs={"dense": 1.5e9, "factored": 5e8}),
        _bench(group, "pair", 2e-3), _bench(group, "dense", 4e-3)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_ratio_table(bench_json, capsys):
    report.main([str(bench_json)])
    out = capsys.readouterr().out
    assert "Machine: test CPU, 2 cores" in out
    # pair/ours 2x, dense/ours 4x, realisation (4 / 1) / 3
    assert "| channel 16-16 32x32 s1 r6 b1 | 1.000 | 4.000 | 2.000 | 4.00x | 2.00x | 1.33 |" in out
    assert "peak" not in out  # only with --fma-peak


def test_peak_table_bounds_ours_by_the_baselines_share_of_the_peak(bench_json, capsys):
    report.main([str(bench_json), "--fma-peak", "1000"])
    out = capsys.readouterr().out
    # 1e9 factored FLOPs in 1 ms = 1000 GFLOP/s (100%) for ours, 500 (50%) for the pair; 3e9 dense
    # FLOPs in 4 ms = 750 GFLOP/s (75%). Bounds: pair/ours <= 1 / 0.5, realisation <= 1 / 0.75.
    row = "| channel 16-16 32x32 s1 r6 b1 | 100% | 50% | 75% | 2.00x | 2.00x | 1.33 |"
    assert row in out
    assert "| **median** | 100% | 50% | 75% | 2.00x | 2.00x | 1.33 |" in out


def test_peak_table_without_recorded_work(tmp_path, capsys):
    data = {"benchmarks": [_bench("g", "ours", 1e-3), _bench("g", "pair", 2e-3), _bench("g", "dense", 3e-3)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    report.main([str(path), "--fma-peak", "100"])
    assert "(no case records its multiply-adds)" in capsys.readouterr().out
