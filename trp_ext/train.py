"""The training job behind ``trp-ext train`` and ``trp-ext demo``: a run directory, TRP training,
per-epoch atomic checkpoints, exact resume, and a final compress-and-report step.

Run directory (``out``):
  config.json      the run's settings
  metrics.jsonl    one JSON line per epoch (rewritten atomically)
  checkpoint.pt    model, optimizer, TRP state and metrics after the last finished epoch
  report.json      dense vs compressed accuracy, ranks, FLOPs and measured speedup
  compressed.pt    the decomposed model (trp_ext.load_compressed)
  ranks.png, spectra.png, training.png
"""
import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from trp_ext import distributed, io, plots
from trp_ext.data import TensorLoader, load_dataset
from trp_ext.lowrank import is_real
from trp_ext.models import build_model
from trp_ext.report import compress_and_report
from trp_ext.trp import TRP

CHECKPOINT_FORMAT = "trp-ext-checkpoint"
# The settings that define a run's training: resuming a checkpoint with other values would silently
# make another run (or crash: a baseline checkpoint has no TRP state), so resuming refuses them.
# The others (epochs, to extend; out, device, data_dir, value_threshold, ...) may change.
RESUME_FIXED = ("arch", "data", "scheme", "lr", "momentum", "weight_decay", "milestones", "batch_size", "seed")
RESUME_FIXED_TRP = ("energy", "period", "nuclear", "subgradient")  # fixed only when the run uses TRP
POSTFIX_EVERY = 10  # steps between progress-bar updates (each one syncs with the GPU)
# The files a run writes besides config.json (see the module docstring). A fresh run in the folder
# of an earlier one deletes them first: it may not write them all (a baseline has no compressed.pt
# or rank plots), and a leftover would pass for this run's.
RUN_OUTPUTS = ("metrics.jsonl", "checkpoint.pt", "report.json", "compressed.pt", "ranks.png", "spectra.png",
               "training.png")


class DistributedJobError(RuntimeError):
    """A process of a distributed job failed, so this one stopped instead of waiting forever."""


@dataclass
class TrainConfig:
    arch: str = "resnet20"
    data: str = "digits"
    data_dir: Optional[str] = None
    scheme: str = "channel"  # "channel", "spatial", or "none" for a plain baseline
    energy: float = 0.99
    period: int = 20
    nuclear: float = 3e-4
    subgradient: str = "truncated"
    epochs: int = 164
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs; lr x0.1 at each
    batch_size: int = 128
    device: str = "cpu"
    out: str = "runs/train"
    seed: int = 0
    data_on_device: bool = False
    channels_last: bool = False
    # Rank rule of the final decomposition of a TRP-trained net: singular values below this are
    # dropped (the published TRP code uses 1e-2). The weights are already low-rank, so the energy
    # rule would cut further (e of e); it is used only when this is None or for a baseline.
    value_threshold: Optional[float] = 1e-2
    latency_batch: int = 64
    dist_timeout: int = 300  # seconds any collective may wait before a missing rank stops the job

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        if values.get("data", cls.data) == "digits" and values.get("data_dir") is not None:
            # Saved before a folder given with the built-in digits was refused: it was never read,
            # and kept it would make load_dataset refuse the run's own checkpoint.
            values = {**values, "data_dir": None}
        return cls(**values)

    def validate(self):
        if self.scheme not in ("channel", "spatial", "none"):
            raise ValueError(f"argument 'scheme' must be 'channel', 'spatial' or 'none', got {self.scheme!r}")
        if self.epochs < 1:
            raise ValueError(f"argument 'epochs' must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"argument 'lr' must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"argument 'batch_size' must be positive, got {self.batch_size}")
        if not (isinstance(self.milestones, (list, tuple)) and all(is_real(f) and 0 <= f <= 1 for f in self.milestones)):
            raise ValueError(f"argument 'milestones' must be a list of fractions of the epochs in [0, 1], "
                             f"got {self.milestones!r}")
        if self.scheme != "none":
            if not 0.0 < self.energy <= 1.0:
                raise ValueError(f"argument 'energy' must lie in (0, 1], got {self.energy}")
            if self.period < 1:
                raise ValueError(f"argument 'period' must be a positive integer, got {self.period}")
            if self.nuclear < 0:
                raise ValueError(f"argument 'nuclear' must be non-negative, got {self.nuclear}")


def data_record(config):
    """The dataset of a run as a compressed model file records it (io.save_compressed's ``data``),
    its folder absolute: ``trp-ext eval`` may run from another directory."""
    return {"name": config.data, "dir": os.path.abspath(config.data_dir) if config.data_dir else None}


def milestone_epochs(config):
    """The epochs at which the lr drops x0.1: each milestone fraction of the epoch count, rounded
    (164 epochs: from epoch 82 and from 123, counted from 0), never before the second epoch
    (round(0.5 * 1) is 0, which ran a one-epoch run entirely at lr x0.1) and each after the one
    before: at 3 epochs both fractions round to epoch 2, which dropped the lr x0.01 at once.
    Drops that this moves past the last epoch do not happen."""
    epochs, last = [], 0
    for fraction in sorted(config.milestones):
        last = max(last + 1, round(fraction * config.epochs))
        epochs.append(last)
    return epochs


def learning_rate(config, epoch):
    """Step schedule: lr x0.1 at each of milestone_epochs(config)."""
    drops = sum(epoch >= milestone for milestone in milestone_epochs(config))
    return config.lr * (0.1 ** drops)


class Run:
    """Everything one training run holds; built fresh or from a checkpoint."""

    def __init__(self, config, quiet=False):
        config.validate()
        self.config = config
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0  # only the main process writes files and prints
        self.quiet = quiet or not self.main
        if config.batch_size % self.world:
            raise ValueError(f"argument 'batch_size' ({config.batch_size}) must divide evenly among "
                             f"{self.world} processes: it is the global batch")
        torch.manual_seed(config.seed)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and self.world > 1 and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dataset = load_dataset(config.data, config.data_dir)
        self.model = build_model(config.arch, num_classes=len(self.dataset.classes),
                                 in_channels=self.dataset.in_channels).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network = self.model  # what forward runs: the model, or its DDP wrapper
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.trp = None
        if config.scheme != "none":
            self.trp = TRP(self.network, scheme=config.scheme, energy=config.energy, period=config.period,
                           lam=config.nuclear, subgradient=config.subgradient)
        data_device = self.device if config.data_on_device else "cpu"
        shard = (self.rank, self.world)
        self.train_loader = TensorLoader(self.dataset, "train", config.batch_size // self.world, seed=config.seed,
                                         device=data_device, shard=shard)
        self.test_loader = TensorLoader(self.dataset, "test", max(256, config.batch_size), device=data_device,
                                        shard=shard)
        self.epoch = 0
        self.metrics = []

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self):
        return os.path.join(self.config.out, "checkpoint.pt")

    def save_checkpoint(self):
        trp_state = self.trp.state_dict() if self.trp is not None else None  # collective when sharded
        if not self.main:
            return
        io.atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            # The folder absolute, as data_record keeps it: eval, compress and bench may run from
            # another directory.
            "config": dict(asdict(self.config), data_dir=data_record(self.config)["dir"]),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trp": trp_state,
            "metrics": self.metrics,
        }, self.checkpoint_path())

    def load_checkpoint(self, path):
        state = read_checkpoint(path)
        conflict = resume_conflict(self.config, state, path)
        if conflict is not None:
            raise ValueError(f"argument '{conflict[0]}': {conflict[1]}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.trp is not None:
            self.trp.load_state_dict(state["trp"])
        self.epoch = int(state["epoch"])
        self.metrics = list(state["metrics"])

    # ------------------------------------------------------------------ training
    def train_epoch(self):
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.epoch)
        # Running sums stay on the device: a .item() per step would sync the host with the GPU
        # every step. The progress bar reads them (one sync) every POSTFIX_EVERY steps.
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", leave=False,
                   disable=self.quiet, dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if self.config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = self.network(images)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.trp is not None:
                self.trp.regularize()
            self.optimizer.step()
            if self.trp is not None:
                self.trp.step()
            total_loss += loss.detach().double() * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
            if not self.quiet and step % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
        if self.world > 1:
            # Each rank's BatchNorm statistics followed its own shard; rank 0's become everyone's,
            # so that evaluation and checkpoints see one model.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
        return total_loss.item() / max(1, seen), 100.0 * correct.item() / max(1, seen)

    def evaluate(self, model=None):
        """Test accuracy; under torch.distributed each rank scores its shard and the counts are summed."""
        from trp_ext.metrics import correct_and_total

        correct, total = correct_and_total(model if model is not None else self.model, self.test_loader, self.device)
        if self.world > 1 and model is None:
            counts = torch.tensor([correct, total], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(counts)
            correct, total = counts.tolist()
        return 100.0 * correct / total

    def evaluate_all(self, model):
        """Accuracy over the whole test set in this process alone (for the final report)."""
        from trp_ext.metrics import accuracy

        loader = TensorLoader(self.dataset, "test", max(256, self.config.batch_size), device=self.test_loader.device)
        return accuracy(model, loader, self.device)

    def fit(self):
        if self.main:
            os.makedirs(self.config.out, exist_ok=True)
            if self.epoch == 0:  # a fresh run, not a resumed one (checkpoints hold finished epochs)
                stale = [f for f in RUN_OUTPUTS if os.path.exists(os.path.join(self.config.out, f))]
                for name in stale:
                    os.remove(os.path.join(self.config.out, name))
                if stale and not self.quiet:
                    tqdm.write(f"replacing the earlier run in {self.config.out} ({', '.join(stale)})")
            io.atomic_write_json(os.path.join(self.config.out, "config.json"), asdict(self.config))
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            train_loss, train_acc = self.train_epoch()
            self.epoch += 1
            entry = {"epoch": self.epoch, "lr": learning_rate(self.config, self.epoch - 1),
                     "train_loss": train_loss, "train_acc": train_acc, "test_acc": self.evaluate(),
                     "mean_rank": self.trp.mean_rank() if self.trp is not None and self.trp.history else None,
                     "seconds": time.perf_counter() - start}
            self.metrics.append(entry)
            if self.main:
                io.atomic_write_text(os.path.join(self.config.out, "metrics.jsonl"),
                                     "".join(json.dumps(m) + "\n" for m in self.metrics))
            self.save_checkpoint()
            if not self.quiet:
                rank = f", mean rank {entry['mean_rank']:.2f}" if entry["mean_rank"] is not None else ""
                tqdm.write(f"epoch {self.epoch}: loss {train_loss:.3f}, train {train_acc:.2f}%, "
                           f"test {entry['test_acc']:.2f}%{rank}")
        return self.metrics

    def finish(self):
        """Compresses the trained model, writes report.json, compressed.pt and the plots."""
        report = compress_and_report(self.model, self.config, self.evaluate_all, self.dataset, self.device)
        out = self.config.out
        io.atomic_write_json(os.path.join(out, "report.json"), report.summary)
        if report.compressed is not None:
            io.save_compressed(report.compressed, os.path.join(out, "compressed.pt"), data=data_record(self.config))
        if self.trp is not None:
            plots.plot_ranks(self.trp.names, [d["rank"] for d in report.summary["layers"]],
                             [d["full_rank"] for d in report.summary["layers"]], os.path.join(out, "ranks.png"))
            plots.plot_spectra(self.trp.layers, self.config.scheme, os.path.join(out, "spectra.png"))
        plots.plot_training(self.metrics, os.path.join(out, "training.png"))
        return report


def read_checkpoint(path):
    return checked_checkpoint(io.safe_torch_load(path, "checkpoint"), path)


def checked_checkpoint(state, path):
    """``state`` (read from ``path``) if it is a trp-ext training checkpoint, else a ValueError."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a trp-ext training checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    return state


def resume_conflict(config, state, path):
    """Why ``config`` cannot continue the checkpoint ``state`` (read from ``path``): (setting, reason),
    or None when it can."""
    saved = TrainConfig.from_dict(state["config"])
    fixed = RESUME_FIXED + (RESUME_FIXED_TRP if saved.scheme != "none" else ())
    for name in fixed:
        ours, theirs = getattr(config, name), getattr(saved, name)
        if ours != theirs:
            return name, (f"{path} was trained with {theirs!r}, not {ours!r}; a resumed run keeps the settings "
                          "that define its training (start a new run to change them)")
    if config.epochs < state["epoch"]:
        return "epochs", f"{path} has already finished {state['epoch']} epoch(s), more than {config.epochs}"
    return None


def train(config, resume=None, quiet=False):
    """Trains (or resumes) a run and writes its run directory; returns the final Report (None on
    the processes other than the main one of a distributed job)."""
    joined = distributed.init_from_env(timeout_seconds=config.dist_timeout)
    try:
        return _train_and_finish(config, resume, quiet)
    finally:
        if joined and torch.distributed.is_initialized():
            # The run (and its DDP reducer, which holds the process group) is gone once
            # _train_and_finish has returned; collected here so that the group, and its gloo
            # threads, end now rather than with the interpreter (see distributed.init_from_env).
            gc.collect()
            torch.distributed.destroy_process_group()


def _train_and_finish(config, resume, quiet):
    run = Run(config, quiet=quiet)
    if resume:
        run.load_checkpoint(resume)
    try:
        run.fit()
    except RuntimeError as error:
        if run.world > 1:
            raise DistributedJobError(
                f"process {run.rank} of {run.world}: a collective failed or timed out after "
                f"{config.dist_timeout} s, most likely because another process died ({error}). "
                f"The last complete epoch is in {run.checkpoint_path()}: restart with --resume."
            ) from error
        raise
    return run.finish() if run.main else None
