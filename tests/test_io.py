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


def test_a_float64_model_loads_back_in_float64_from_its_recorded_architecture(tmp_path):
    """Built from the file's arch (float32 by default), its float64 tensors were cast down silently."""
    torch.manual_seed(0)
    compressed, report = decompose(build_model("resnet20", num_classes=10).double().eval(), "spatial", energy=0.5)
    assert report.factored
    save_compressed(compressed, tmp_path / "m64.pt")
    loaded = load_compressed(tmp_path / "m64.pt").eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(loaded(x), compressed.eval()(x), rtol=0, atol=0)


def test_a_file_with_flipped_bytes_is_refused_not_loaded_as_garbage(tmp_path):
    save_compressed(_compressed(), tmp_path / "m.pt")
    data = bytearray((tmp_path / "m.pt").read_bytes())
    middle = len(data) // 2  # inside the tensors' bytes, which torch.load reads unchecked
    data[middle:middle + 16] = bytes(b ^ 0x55 for b in data[middle:middle + 16])
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.pt is not a readable trp-ext compressed model: it is corrupted"):
        load_compressed(tmp_path / "bad.pt")


@pytest.mark.parametrize("where,message", [("nonsense", "must name a device"), (3.5, "must name a device")] +
                         ([] if torch.cuda.is_available() else [("cuda", "is not available on this machine")]))
def test_a_bad_map_location_is_named_not_blamed_on_the_file(tmp_path, where, message):
    save_compressed(_compressed(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=f"argument 'map_location'.*{message}"):
        load_compressed(tmp_path / "m.pt", map_location=where)
    assert load_compressed(tmp_path / "m.pt", map_location=torch.device("cpu:0")) is not None


@pytest.mark.skipif(not hasattr(os, "fchmod") or os.name != "posix", reason="POSIX permissions")
def test_atomic_write_keeps_permissions_links_and_long_names(tmp_path, monkeypatch):
    private = tmp_path / "private.json"
    atomic_write_text(private, "old")
    os.chmod(private, 0o600)
    atomic_write_text(private, "new")
    assert private.read_text() == "new" and (os.stat(private).st_mode & 0o777) == 0o600
    link = tmp_path / "link.json"
    os.symlink(private, link)
    atomic_write_text(link, "through the link")
    assert os.path.islink(link) and private.read_text() == "through the link"
    long_name = tmp_path / ("x" * 250 + ".pt")  # the temporary name must still fit 255 bytes
    atomic_write_text(long_name, "long")
    assert long_name.read_text() == "long"

    def refused(fd, mode):
        raise PermissionError("this filesystem keeps no permissions")

    monkeypatch.setattr(os, "fchmod", refused)
    open_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(3):
        atomic_write_text(tmp_path / "plain.json", "saved anyway")
    assert (tmp_path / "plain.json").read_text() == "saved anyway"
    if open_before is not None:
        assert len(os.listdir("/proc/self/fd")) == open_before  # no descriptor left open
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


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
