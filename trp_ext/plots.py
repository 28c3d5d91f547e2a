"""PNG plots of a run: rank per layer, singular-value spectra, accuracy and mean rank over training."""
import io
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from trp_ext.io import atomic_write_bytes  # noqa: E402
from trp_ext.lowrank import layer_matrix  # noqa: E402


def _save(fig, path):
    # Rendered in memory and then written atomically: savefig(path) would truncate an earlier plot
    # first and leave a broken file if interrupted. The format follows the extension, as savefig's.
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format=os.path.splitext(os.fspath(path))[1][1:].lower() or None)
        atomic_write_bytes(path, buffer.getvalue())
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive until closed


def plot_ranks(names, ranks, full_ranks, path, title="rank per layer"):
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    positions = range(len(names))
    ax.bar(positions, full_ranks, color="#d0d7e1", label="full rank")
    ax.bar(positions, ranks, color="#2b6cb0", label="kept rank")
    ax.set_xticks(list(positions), names, rotation=90, fontsize=7)
    ax.set_ylabel("rank")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_spectra(layers, scheme, path, count=4):
    """Normalised singular values of up to `count` layers spread over the network."""
    # Evenly spaced from the first layer to the last (every stage shown).
    picks = sorted({round(i * (len(layers) - 1) / max(count - 1, 1)) for i in range(min(count, len(layers)))})
    chosen = [layers[i] for i in picks]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, module in chosen:
        s = torch.linalg.svdvals(layer_matrix(module, scheme).double().cpu())
        ax.semilogy(range(1, len(s) + 1), (s / s[0].clamp_min(1e-30)).clamp_min(1e-12).numpy(), label=name)
    ax.set_xlabel("index i")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(f"singular-value spectra ({scheme} scheme)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_training(metrics, path):
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["test_acc"] for m in metrics], color="#2b6cb0", marker="o", ms=3, label="test accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)", color="#2b6cb0")
    ranks = [m.get("mean_rank") for m in metrics]
    if any(r is not None for r in ranks):
        twin = ax.twinx()
        twin.plot(epochs, [r if r is not None else float("nan") for r in ranks], color="#c05621", marker="s",
                  ms=3, label="mean rank")
        twin.set_ylabel("mean rank", color="#c05621")
    ax.set_title("accuracy and mean rank over training")
    _save(fig, path)
