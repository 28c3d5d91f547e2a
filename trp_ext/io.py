"""Atomic file writes, checkpoints, and saving/loading compressed models.

Every write goes to a temporary file in the target's folder, is flushed to disk, and then
renamed over the target, so a crash never leaves a half-written file. Every load uses
``torch.load(weights_only=True)``: a file can hold tensors and plain containers, never code.
"""
import io
import json
import os
import stat
import tempfile
import zipfile

import torch
import torch.nn as nn

from trp_ext.nn import FactoredConv2d, replace_submodule

COMPRESSED_FORMAT = "trp-ext-compressed"
COMPRESSED_VERSION = 1


def _umask():
    """The process's umask, read without setting it where Linux allows (os.umask can only be read
    by setting it, a race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    # Through a symlink: its target is replaced, the link stays.
    path = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    try:  # an overwritten file keeps its permissions (a private checkpoint stays private)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # what open() would give; mkstemp makes 0600 files
    # A short prefix: the temporary name must stay within the 255 bytes a name may have.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                os.fchmod(handle.fileno(), mode)
            except OSError:
                pass  # a filesystem without permissions: the file keeps mkstemp's
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


def _corrupted_record(path):
    """The first record of a torch.save zip file whose bytes fail the CRC-32 the zip stores for it,
    or None. torch.load does not check them: flipped bits in a tensor loaded as garbage values."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except zipfile.BadZipFile:
        return None  # not a zip (an old format, or not torch.save's): torch.load judges it
    except (zipfile.LargeZipFile, RuntimeError, EOFError, ValueError) as error:
        return f"({type(error).__name__}: {error})"


def _load_device(map_location):
    """map_location as a torch.device, or a ValueError that names it (torch.load's error would read
    as a corrupted file)."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"argument 'map_location' must name a device, got {map_location!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"argument 'map_location': {device} is not available on this machine")
    return device


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def safe_torch_load(path, what="checkpoint", map_location="cpu"):
    """torch.load(weights_only=True), turning a missing, truncated, corrupted or foreign file into a
    clear error. The file is read onto the CPU, then moved to ``map_location``, so that an
    unusable device is reported as such rather than as a bad file."""
    device = _load_device(map_location)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    corrupted = _corrupted_record(path)
    if corrupted is not None:
        raise ValueError(f"{path} is not a readable trp-ext {what}: it is corrupted (record {corrupted} fails "
                         "its checksum)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable (permissions, I/O): not a matter of the file's contents
    except Exception as error:  # noqa: BLE001 - every other failure means the same thing to the user
        raise ValueError(f"{path} is not a readable trp-ext {what} (truncated, corrupted, or not written by "
                         f"trp-ext): {type(error).__name__}: {error}") from None
    if device.type == "cpu":
        return payload
    try:
        return _to_device(payload, device)
    except RuntimeError as error:
        raise ValueError(f"argument 'map_location': cannot move the {what} to {device}: {error}") from None


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
        # Built in float32 on the CPU: load_state_dict would cast a float64 (or CUDA) model's
        # tensors into it, silently. The saved floating tensors say where and in what it runs.
        saved = next((t for t in payload["state_dict"].values() if t.is_floating_point()), None)
        if saved is not None:
            model = model.to(device=saved.device, dtype=saved.dtype)
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
