"""Atomic file writes, checkpoints, and saving/loading compressed models.

Every write goes to a temporary file in the target's folder, is flushed to disk, and then
renamed over the target, so a crash never leaves a half-written file. Every load uses
``torch.load(weights_only=True)``: a file can hold tensors and plain containers, never code.
"""
import io
import json
import os
import tempfile

import torch
import torch.nn as nn

from trp_ext.nn import FactoredConv2d, replace_submodule

COMPRESSED_FORMAT = "trp-ext-compressed"
COMPRESSED_VERSION = 1


def atomic_write_bytes(path, data):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, path):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path, what="checkpoint", map_location="cpu"):
    """torch.load(weights_only=True), turning a missing, truncated or foreign file into a clear error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure means the same thing to the user
        raise ValueError(f"{path} is not a readable trp-ext {what} (truncated, corrupted, or not written by "
                         f"trp-ext): {type(error).__name__}: {error}") from None


# ---------------------------------------------------------------------------- compressed models
def _factored_spec(module):
    return {"in_channels": module.in_channels, "out_channels": module.out_channels, "rank": module.rank,
            "kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "padding": list(module.padding), "dilation": list(module.dilation), "scheme": module.scheme,
            "bias": module.bias is not None, "activation": module.activation}


def _data_record(data):
    """save_compressed's ``data``, checked: the file must stay loadable with weights_only=True."""
    if data is None:
        return None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str)
            and isinstance(data.get("dir"), (str, type(None))) and set(data) <= {"name", "dir"}):
        raise ValueError(f"argument 'data' must be {{'name': str, 'dir': str or None}}, got {data!r}")
    return {"name": data["name"], "dir": data.get("dir")}


def save_compressed(model, path, arch=None, data=None):
    """Saves a decomposed model with what is needed to rebuild it: the base architecture
    (``arch``: {"name": ..., **build kwargs}, default ``model.trp_arch`` set by
    ``trp_ext.models.build_model``), the rank and geometry of every factored layer, and the
    BatchNorms folded away. Written atomically.

    ``data``: optionally the dataset it was trained on, {"name": ..., "dir": folder or None}
    (as ``trp_ext.data.load_dataset`` takes them), which ``trp-ext eval`` then defaults to."""
    arch = arch if arch is not None else getattr(model, "trp_arch", None)
    data = _data_record(data)
    factored, folded = {}, []
    for name, module in model.named_modules():
        if isinstance(module, FactoredConv2d):
            factored[name] = _factored_spec(module)
        elif isinstance(module, nn.Identity) and name:
            folded.append(name)
    payload = {
        "format": COMPRESSED_FORMAT,
        "version": COMPRESSED_VERSION,
        "arch": dict(arch) if arch is not None else None,
        "factored": factored,
        "identity": folded,
        "data": data,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def load_compressed(path, model=None, map_location="cpu"):
    """Rebuilds a model saved by :func:`save_compressed`.

    ``model``: the dense base network to rebuild on; by default it is built from the recorded
    architecture (needed for models outside ``trp_ext.models``).
    """
    return model_from_compressed(safe_torch_load(path, "compressed model", map_location), path, model)


def model_from_compressed(payload, path, model=None):
    """:func:`load_compressed` on a payload already read from ``path`` (named in errors)."""
    if not isinstance(payload, dict) or payload.get("format") != COMPRESSED_FORMAT:
        raise ValueError(f"{path} is not a trp-ext compressed model (no '{COMPRESSED_FORMAT}' header); "
                         "save it with trp_ext.save_compressed")
    if payload.get("version") != COMPRESSED_VERSION:
        raise ValueError(f"{path} has compressed-model format version {payload.get('version')}, "
                         f"this trp-ext reads version {COMPRESSED_VERSION}")
    try:
        _data_record(payload.get("data"))
    except ValueError:
        raise ValueError(f"{path} has a malformed data record: {payload.get('data')!r}") from None
    if model is None:
        if payload["arch"] is None:
            raise ValueError(f"{path} records no architecture: pass the dense base network as argument 'model'")
        from trp_ext.models import build_model

        arch = dict(payload["arch"])
        model = build_model(arch.pop("name"), **arch)
    for name, spec in payload["factored"].items():
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path} has a factored layer '{name}' that the base network (argument 'model') "
                             "lacks: it was saved from another architecture") from None
        # load_state_dict copies into the parameters as they are: built in FactoredConv2d's
        # default float32 on the CPU, a float64 or CUDA base model's layers would stay so
        weight = next(dense.parameters(), None)
        factory = {"dtype": weight.dtype, "device": weight.device} if weight is not None else {}
        replace_submodule(model, name, FactoredConv2d(**spec, **factory))
    for name in payload["identity"]:
        replace_submodule(model, name, nn.Identity())
    model.load_state_dict(payload["state_dict"], strict=True)
    model.trp_arch = payload["arch"]
    return model
