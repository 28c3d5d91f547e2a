"""Atomic writes and compressed-model files."""
import os

import pytest
import torch

from trp_ext import TRP, decompose, load_compressed, save_compressed
from trp_ext.io import atomic_write_text, safe_torch_load
from trp_ext.models import build_model


def _compressed(scheme="channel"):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    TRP(model, scheme=scheme, energy=0.8, period=1, lam=0.0).step()
    compressed, _ = decompose(model.eval(), scheme, value_threshold=1e-3)
    return compressed.eval()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_round_trip(tmp_path, scheme):
    compressed = _compressed(scheme)
    path = tmp_path / "model.pt"
    save_compressed(compressed, path)
    loaded = load_compressed(path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), compressed(x), rtol=0, atol=0)
    assert [p for p in os.listdir(tmp_path)] == ["model.pt"]  # no temporary files left behind


def test_round_trip_onto_given_base_model(tmp_path):
    compressed = _compressed()
    compressed.trp_arch = None
    save_compressed(compressed, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="argument 'model'"):
        load_compressed(tmp_path / "m.pt")
    loaded = load_compressed(tmp_path / "m.pt", model=build_model("resnet20")).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), compressed(x), rtol=0, atol=0)


def test_round_trip_keeps_the_base_models_dtype(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).double().eval()
    compressed, report = decompose(model, "channel", energy=0.5)
    assert report.factored
    save_compressed(compressed, tmp_path / "m64.pt")
    loaded = load_compressed(tmp_path / "m64.pt", model=build_model("resnet20", num_classes=10).double()).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), compressed.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("data", ["cifar10", {"name": "cifar10", "dir": 3}, {"dir": "/x"},
                                  {"name": "folder", "dir": "/x", "extra": 1}])
def test_data_record_must_be_a_name_and_folder(tmp_path, data):
    with pytest.raises(ValueError, match="argument 'data'"):
        save_compressed(_compressed(), tmp_path / "m.pt", data=data)
    assert not os.listdir(tmp_path)


def test_malformed_data_record_in_a_file_names_the_file(tmp_path):
    save_compressed(_compressed(), tmp_path / "m.pt", data={"name": "folder", "dir": "/images"})
    payload = safe_torch_load(tmp_path / "m.pt")
    assert payload["data"] == {"name": "folder", "dir": "/images"}
    payload["data"] = ["folder"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt has a malformed data record"):
        load_compressed(tmp_path / "bad.pt")


def test_base_model_without_a_saved_layer_raises(tmp_path):
    save_compressed(_compressed(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="argument 'model'"):
        load_compressed(tmp_path / "m.pt", model=torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3)))


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "model.pt"
    save_compressed(_compressed(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_compressed(path)


def test_foreign_files_raise(tmp_path):
    torch.save({"weight": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a trp-ext compressed model"):
        load_compressed(tmp_path / "plain.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        load_compressed(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "missing.pt")


def test_code_in_a_file_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "trp-ext-compressed", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError):
        safe_torch_load(tmp_path / "evil.pt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.json"]
