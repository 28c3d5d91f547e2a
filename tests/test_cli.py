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


# ---------------------------------------------------------------------------- options and their defaults
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of TINY TRP training; tests read it (or copies of its checkpoint), never change it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _edited_checkpoint(source, target, epoch=None, **config):
    state = torch.load(source, weights_only=True)
    state["config"].update(config)
    if config.get("scheme") == "none":
        state["trp"] = None  # what a baseline run saves
    if epoch is not None:
        state["epoch"] = epoch
    torch.save(state, target)
    return str(target)


@pytest.fixture
def untimed(monkeypatch):
    """compress without its latency timing (test_compress_eval_bench_commands covers that): on a
    shared 2-core machine it is most of a compress's time, and not what these tests check."""
    from trp_ext import report

    monkeypatch.setattr(report, "latency_pair", lambda dense, compressed, example, repeats:
                        (1.0, None if compressed is None else 0.5))


def _decomposed_mean_rank(checkpoint, **rule):
    from trp_ext import decompose
    from trp_ext.models import build_model

    model = build_model("resnet20", num_classes=10, in_channels=1)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return decompose(model.eval(), "channel", **rule)[1].mean_rank()


def test_train_decomposes_with_the_default_value_threshold(trained):
    from trp_ext.cli import build_parser
    from trp_ext.train import TrainConfig

    assert TrainConfig().value_threshold is not None  # the README's advice for a TRP-trained net
    assert json.loads((trained / "config.json").read_text())["value_threshold"] == TrainConfig().value_threshold
    assert build_parser().parse_args(["train", "--value-threshold", "none"]).value_threshold is None


def test_resume_takes_the_checkpoints_settings(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    projections = len(torch.load(run / "checkpoint.pt", weights_only=True)["trp"]["history"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the saved out is not where a fresh run would go from here
    assert main(["train", "--quiet", "--resume", str(run / "checkpoint.pt"), "--epochs", "2"]) == 0
    assert os.listdir(elsewhere) == []
    assert json.loads((run / "config.json").read_text()) == dict(saved, epochs=2, out=str(run))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["trp"]["history"]) > projections > 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("args,option", [
    (["--scheme", "none"], "--scheme"),
    (["--arch", "resnet32"], "--arch"),
    (["--lr", "0.1"], "--lr"),
    (["--batch-size", "128"], "--batch-size"),
    (["--energy", "0.5"], "--energy"),
])
def test_resume_refuses_options_that_change_the_training(trained, tmp_path, monkeypatch, capsys, args, option):
    monkeypatch.chdir(tmp_path)
    ckpt = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "c.pt")
    before = os.path.getmtime(ckpt)
    assert main(["train", "--quiet", "--resume", ckpt, "--epochs", "1", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "runs")
    assert os.path.getmtime(ckpt) == before


def test_resume_of_a_baseline_with_trp_is_refused(trained, tmp_path, monkeypatch, capsys):
    from trp_ext.train import Run, TrainConfig

    monkeypatch.chdir(tmp_path)
    baseline = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "base.pt", scheme="none")
    assert main(["train", "--quiet", "--resume", baseline, "--epochs", "1", "--scheme", "channel"]) == 2
    assert "argument --scheme:" in capsys.readouterr().err
    # The Python API refuses it too, naming the setting, instead of failing inside TRP.
    config = TrainConfig.from_dict(dict(torch.load(baseline, weights_only=True)["config"], scheme="channel"))
    with pytest.raises(ValueError, match="argument 'scheme'"):
        Run(config, quiet=True).load_checkpoint(baseline)


def test_resume_refuses_fewer_epochs_than_done(trained, tmp_path, capsys):
    ckpt = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "c.pt", epoch=3)
    assert main(["train", "--quiet", "--resume", ckpt, "--epochs", "2", "--out", str(tmp_path / "r")]) == 2
    assert "argument --epochs:" in capsys.readouterr().err


def test_resume_on_a_missing_saved_device_asks_for_device(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "c.pt", device="cuda")
    assert main(["train", "--quiet", "--resume", ckpt, "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "argument --device:" in err and "CUDA" in err


# ---------------------------------------------------------------------------- compress / bench rank rule
def test_compress_and_bench_energy_overrides_the_saved_value_threshold(trained, tmp_path, capsys, untimed):
    ckpt = str(trained / "checkpoint.pt")
    assert json.loads((trained / "config.json").read_text())["value_threshold"] is not None
    assert main(["compress", "--checkpoint", ckpt, "--energy", "0.5", "--out", str(tmp_path / "c.pt"),
                 "--report", str(tmp_path / "r.json")]) == 0
    expected = _decomposed_mean_rank(ckpt, energy=0.5)
    assert expected < _decomposed_mean_rank(ckpt, value_threshold=1e-2)  # so the two rules differ here
    assert json.loads((tmp_path / "r.json").read_text())["mean_rank"] == pytest.approx(expected)
    capsys.readouterr()
    flops = []
    for extra in ([], ["--energy", "0.5"]):
        assert main(["bench", "--checkpoint", ckpt, "--batch-sizes", "1", "--repeats", "1", *extra]) == 0
        flops.append(capsys.readouterr().out.splitlines()[0])
    assert flops[0] != flops[1]


def test_compress_of_a_baseline_uses_its_energy(trained, tmp_path, untimed):
    # The rank rule of a baseline is its energy (capped by its value threshold); the --scheme it
    # needs here must not make it look TRP-trained, whose rule is the value threshold alone.
    baseline = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "base.pt", scheme="none",
                                  value_threshold=1e-2)
    assert main(["compress", "--checkpoint", baseline, "--scheme", "channel", "--out", str(tmp_path / "c.pt"),
                 "--report", str(tmp_path / "r.json")]) == 0
    energy = json.loads((trained / "config.json").read_text())["energy"]
    expected = _decomposed_mean_rank(baseline, energy=energy, value_threshold=1e-2)
    assert expected < _decomposed_mean_rank(baseline, value_threshold=1e-2)
    assert json.loads((tmp_path / "r.json").read_text())["mean_rank"] == pytest.approx(expected)


def test_compress_energy_and_value_threshold_are_exclusive(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--checkpoint", str(trained / "checkpoint.pt"), "--energy", "0.5",
              "--value-threshold", "0.01", "--out", str(tmp_path / "c.pt")])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------------------- plots
def test_an_interrupted_plot_keeps_the_earlier_file(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from trp_ext import plots

    metrics = [{"epoch": i, "test_acc": 10.0 * i, "mean_rank": 5.0} for i in (1, 2, 3)]
    path = tmp_path / "training.png"
    plots.plot_training(metrics, path)
    good = path.read_bytes()
    assert good.startswith(b"\x89PNG")

    def interrupted(fig, target, **kwargs):  # Ctrl-C while the PNG is being written
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as handle:
                handle.write(b"\x89PNG partial")
        else:
            target.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plots.plot_training(metrics, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["training.png"]
    assert plt.get_fignums() == []


# ---------------------------------------------------------------------------- devices and paths
@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["compress", "--checkpoint", "c.pt", "--out", "x.pt"],
                                     ["eval", "--model", "m.pt"], ["bench", "--checkpoint", "c.pt"],
                                     ["demo", "--epochs", "1"]])
@pytest.mark.parametrize("device,message", [("gpu", "invalid device 'gpu'"), ("meta", "not supported"),
                                            ("cuda", "needs CUDA")])
def test_bad_device_is_an_argument_error(tmp_path, monkeypatch, capsys, command, device, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--device", device])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --device:" in err and message in err
    assert os.listdir(tmp_path) == []


def test_compress_and_bench_run_on_cpu_when_the_saved_device_is_cuda(trained, tmp_path, monkeypatch, untimed):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = _edited_checkpoint(trained / "checkpoint.pt", tmp_path / "c.pt", device="cuda")
    assert main(["compress", "--checkpoint", ckpt, "--out", str(tmp_path / "m.pt"),
                 "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["device"] == "cpu"
    assert main(["bench", "--checkpoint", ckpt, "--batch-sizes", "1", "--repeats", "1"]) == 0


@pytest.mark.parametrize("args,option", [
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--batch-sizes", "1", "-1"], "--batch-sizes"),
    (["--repeats", "0"], "--repeats"),
])
def test_bench_counts_must_be_positive(trained, capsys, args, option):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--checkpoint", str(trained / "checkpoint.pt"), *args])
    assert exit_.value.code == 2 and f"argument {option}:" in capsys.readouterr().err


def test_output_paths_that_cannot_be_written_are_argument_errors(trained, tmp_path, capsys):
    a_file, a_dir = tmp_path / "file", tmp_path / "dir"
    a_file.write_text("x")
    a_dir.mkdir()
    ckpt = str(trained / "checkpoint.pt")
    for argv in (["train", "--quiet", "--epochs", "1", "--out", str(a_file)],
                 ["train", "--quiet", "--epochs", "1", "--out", str(a_file / "run")],
                 ["compress", "--checkpoint", ckpt, "--out", str(a_dir)],
                 ["compress", "--checkpoint", ckpt, "--out", str(a_file / "c.pt")],
                 ["compress", "--checkpoint", ckpt, "--out", str(tmp_path / "c.pt"), "--report", str(a_dir)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        option = "--report" if "--report" in argv else "--out"
        assert exit_.value.code == 2 and f"argument {option}:" in capsys.readouterr().err, argv
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and os.listdir(a_dir) == []


def test_learning_rate_schedule_never_drops_before_the_second_epoch():
    from trp_ext.train import TrainConfig, learning_rate

    assert learning_rate(TrainConfig(epochs=1, lr=0.1), 0) == 0.1
    two = [learning_rate(TrainConfig(epochs=2, lr=0.1), e) for e in range(2)]
    assert two == [0.1, pytest.approx(0.01)]
    paper = [learning_rate(TrainConfig(epochs=164, lr=0.1), e) for e in (81, 82, 122, 123)]
    assert paper == [0.1, pytest.approx(0.01), pytest.approx(0.01), pytest.approx(0.001)]


@pytest.mark.parametrize("epochs,expected", [(3, [1, 1, 0.1]), (4, [1, 1, 0.1, 0.01]),
                                             (5, [1, 1, 0.1, 0.1, 0.01])])
def test_learning_rate_drops_one_step_at_a_time(epochs, expected):
    # At 3 epochs both milestones (0.5, 0.75) round to epoch 2: the lr fell x0.01 at once.
    from trp_ext.train import TrainConfig, learning_rate

    schedule = [learning_rate(TrainConfig(epochs=epochs, lr=1.0), e) for e in range(epochs)]
    assert schedule == [pytest.approx(v) for v in expected]


@pytest.mark.parametrize("milestones", [[0.5, 1.5], [-0.1], "0.5", [float("nan")], [True]])
def test_milestones_must_be_fractions(milestones):
    from trp_ext.train import TrainConfig

    with pytest.raises(ValueError, match="argument 'milestones'"):
        TrainConfig(milestones=milestones).validate()


def test_eval_of_a_compressed_model_on_data_of_another_shape_names_the_option(tmp_path, capsys):
    from trp_ext import decompose, save_compressed
    from trp_ext.models import build_model

    torch.manual_seed(0)
    compressed, _ = decompose(build_model("resnet20", num_classes=10).eval(), "channel", energy=0.5)
    save_compressed(compressed, tmp_path / "cifar_shaped.pt")
    assert main(["eval", "--model", str(tmp_path / "cifar_shaped.pt")]) == 2  # digits: 1 channel, 8x8
    err = capsys.readouterr().err
    assert "argument --data:" in err and "3-channel" in err and "Traceback" not in err


def test_eval_of_a_checkpoint_on_data_of_another_shape_names_the_option(trained, tmp_path, capsys):
    from test_data import _write_cifar  # a CIFAR-10 folder in miniature: 3-channel 32x32 images

    _write_cifar(tmp_path)
    assert main(["eval", "--model", str(trained / "checkpoint.pt"), "--data", "cifar10",
                 "--data-dir", str(tmp_path)]) == 2  # the checkpoint's net takes 1-channel digits
    err = capsys.readouterr().err
    assert "argument --data:" in err and "3-channel" in err and "Traceback" not in err


def test_a_checkpoint_records_its_data_folder_absolute(tmp_path, monkeypatch):
    from test_data import _write_cifar

    _write_cifar(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--data", "cifar10", "--data-dir", "data", "--arch", "resnet20", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["config"]["data_dir"] == str(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "run")  # eval from elsewhere reads the same folder
    assert main(["eval", "--model", "checkpoint.pt"]) == 0


def test_a_fresh_run_in_an_earlier_runs_folder_leaves_none_of_its_files(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert (run / "compressed.pt").exists() and (run / "ranks.png").exists()
    assert main(["train", *TINY, "--epochs", "1", "--scheme", "none", "--out", str(run)]) == 0
    assert not (run / "compressed.pt").exists() and not (run / "ranks.png").exists()
    assert not (run / "spectra.png").exists()
    assert json.loads((run / "report.json").read_text())["scheme"] == "none"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def _image_folder(root, classes=("cat", "dog")):
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (200 * label, 40 * i, 0)).save(root / split / name / f"{i}.png")
    return root


def test_eval_of_a_compressed_model_defaults_to_the_data_it_records(tmp_path, capsys):
    from trp_ext import decompose, save_compressed
    from trp_ext.models import build_model

    images = _image_folder(tmp_path / "images")
    torch.manual_seed(0)
    compressed, _ = decompose(build_model("resnet20", num_classes=2).eval(), "channel", energy=0.5)
    save_compressed(compressed, tmp_path / "m.pt", data={"name": "folder", "dir": str(images)})
    assert main(["eval", "--model", str(tmp_path / "m.pt")]) == 0
    assert "on images test (6 images)" in capsys.readouterr().out
    # another folder of the same dataset kind, given explicitly, wins over the recorded one
    other = _image_folder(tmp_path / "other", classes=("a", "b"))
    for image in (other / "test" / "a").iterdir():
        image.unlink()
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--data-dir", str(other)]) == 0
    assert "on other test (3 images)" in capsys.readouterr().out


def test_train_writes_its_data_into_the_compressed_model(tmp_path, monkeypatch):
    from trp_ext.io import safe_torch_load
    from trp_ext.train import TrainConfig, data_record

    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert safe_torch_load(tmp_path / "run" / "compressed.pt")["data"] == {"name": "digits", "dir": None}
    # A relative folder is recorded absolute: eval may run from another directory.
    monkeypatch.chdir(tmp_path)
    assert data_record(TrainConfig(data="cifar10", data_dir="cifar")) == {"name": "cifar10",
                                                                          "dir": str(tmp_path / "cifar")}


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_data_dir_for_the_built_in_digits_is_refused(tmp_path, capsys, command):
    # It was ignored: the run trained (or evaluated) on digits while its user meant the folder.
    args = ([*TINY, "--epochs", "1", "--out", str(tmp_path / "run")] if command == "train"
            else ["--model", str(tmp_path / "m.pt")])
    if command == "eval":
        from trp_ext import save_compressed
        from trp_ext.decompose import decompose
        from trp_ext.models import build_model

        save_compressed(decompose(build_model("resnet20", in_channels=1).eval(), "channel", energy=0.5)[0],
                        tmp_path / "m.pt")
    assert main([command, *args, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "argument 'data_dir'" in err and "'digits' is built in" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_full_disk_is_an_error_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "trp-ext train: error:" in err and "No space left on device" in err and "Traceback" not in err
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]


def test_a_checkpoint_saved_with_an_ignored_digits_folder_still_loads(tmp_path, capsys):
    # Before such a folder was refused, it was saved in the config though never read: the run's
    # own checkpoint must still resume, compress and evaluate.
    from trp_ext.io import atomic_torch_save, safe_torch_load

    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    state = safe_torch_load(run / "checkpoint.pt")
    state["config"]["data_dir"] = str(tmp_path / "never_read")
    atomic_torch_save(state, run / "checkpoint.pt")
    assert main(["eval", "--model", str(run / "checkpoint.pt")]) == 0
    assert main(["compress", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "c.pt")]) == 0
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2", "--quiet"]) == 0
    assert "error" not in capsys.readouterr().err
