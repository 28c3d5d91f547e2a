"""The trp-ext command end to end on tiny settings."""
import json
import os

import pytest
import torch

from trp_ext import load_compressed
from trp_ext.cli import main

TINY = ["--data", "digits", "--arch", "resnet20", "--batch-size", "256", "--period", "2", "--energy", "0.9",
        "--lr", "0.05", "--quiet"]


def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    files = set(os.listdir(out))
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "report.json", "compressed.pt",
            "ranks.png", "spectra.png", "training.png"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["mean_rank"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["flops_speedup"] > 1.0 and "compressed_accuracy" in report
    table = capsys.readouterr().out
    assert "FLOPs speedup" in table and "measured speedup b=1" in table
    model = load_compressed(out / "compressed.pt")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from trp_ext.train import Run

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(straight)]) == 0

    save = Run.save_checkpoint

    def crash_after_first_epoch(run):
        save(run)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Run, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *TINY, "--epochs", "2", "--out", str(split)])
    monkeypatch.setattr(Run, "save_checkpoint", save)
    assert torch.load(split / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main(["train", *TINY, "--epochs", "2", "--out", str(split), "--resume", str(split / "checkpoint.pt")]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["trp"]["history"] == b["trp"]["history"]
    assert [m["test_acc"] for m in a["metrics"]] == [m["test_acc"] for m in b["metrics"]]


def test_compress_eval_bench_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.pt")
    assert main(["compress", "--checkpoint", ckpt, "--out", str(tmp_path / "c.pt"),
                 "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["flops_speedup"] > 1
    assert main(["eval", "--model", str(tmp_path / "c.pt")]) == 0
    assert main(["eval", "--model", ckpt]) == 0
    assert main(["bench", "--checkpoint", ckpt, "--batch-sizes", "1", "4", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "speedup" in text


@pytest.mark.parametrize("args,message", [
    (["--energy", "1.5"], "argument 'energy'"),
    (["--period", "-1"], "argument 'period'"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_bad_arguments_give_clear_errors(tmp_path, capsys, args, message):
    assert main(["train", "--quiet", "--epochs", "1", "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_scheme_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--scheme", "diagonal"])
    assert "invalid choice" in capsys.readouterr().err


def test_foreign_checkpoint_is_rejected(tmp_path, capsys):
    torch.save({"model": {}}, tmp_path / "x.pt")
    assert main(["compress", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "c.pt")]) == 2
    assert "not a trp-ext training checkpoint" in capsys.readouterr().err
