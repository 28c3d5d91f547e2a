"""bench/bench_projection.py's TRP_BENCH_TRAINED weight sets, from a TRP checkpoint."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trp_ext.models import build_model
from trp_ext.selection import select_layers
from trp_ext.train import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("in_channels,num_classes", [(1, 10), (3, 10), (3, 100)])
def test_trained_weights_load_whatever_data_the_run_had(tmp_path, in_channels, num_classes):
    # The default `trp-ext train` runs on the built-in digits (1-channel images): the bench built
    # every CIFAR net for 3 channels and 10 classes, and failed to collect with such a checkpoint.
    model = build_model("resnet20", num_classes=num_classes, in_channels=in_channels)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"arch": "resnet20", "scheme": "spatial"},
                "model": model.state_dict()}, path)
    code = ("import sys; sys.path.insert(0, 'bench'); import bench_projection as b; "
            f"key, mats = b._trained({str(path)!r}); print(key, len(mats), tuple(mats[0].shape))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first = next(conv for _, conv in select_layers(model))
    c, n, k = first.in_channels, first.out_channels, first.kernel_size[0]
    layers = len(list(select_layers(model)))
    assert done.stdout.split() == ["trained-resnet20/spatial", str(layers), f"({c * k},", f"{k * n})"]
