"""lowrank_project against the per-layer SVD loop of the published TRP code, and batched SVD.

Weight sets: the conv weights TRP projects (trp_ext.selection.select_layers) of CIFAR ResNet-20
and ResNet-56 and ImageNet ResNet-18 and ResNet-50, as matrices in both schemes
(trp_ext._reference.conv_weight_to_matrix), with decaying spectra s_i = exp(-i / tau), tau = k/8
for a k x n matrix (at the energy 0.99 of TRP's default, ranks come to ~0.29 k).

The scenario is TRP's step(): the weights were projected by the previous call, then moved by a
few SGD steps (a random drift of relative size DRIFT), and are projected again. Groups:
  "<arch>/<scheme> cold": ours without bases vs "loop" (torch.linalg.svd per layer, energy rank,
      reconstruct, as the published code does) and "batched-svd" (torch.linalg.svd batched per
      shape group, the same rank rule and reconstruction, batched).
  "<arch>/<scheme> warm": ours warm-started from the previous call's bases vs "loop" and our
      own cold solve ("cold").
  "<arch>/<scheme> warm-unprojected": as warm, but the drift is added to weights that were
      never projected (a harder case for warm starts: no spectral gap at the rank).
  "<arch>/<scheme> warm-steady" (CIFAR): the next step of the same chain, warm-started from the
      bases the warm call returned (narrowed to the spectral gap), as TRP's later steps run.

TRP_BENCH_TRAINED=path/to/checkpoint.pt adds the groups "trained-<arch>/<scheme> ..." with the
weights of a TRP checkpoint (its config names the arch and scheme) instead of synthetic ones.
The warm/widened/fallback counts of every warm group are stored in extra_info.

These synthetic sets favour warm starts: their ranks (~0.29 k) are lower, and the drift (1e-3)
smaller, than those of TRP's early training on CIFAR-10 (ranks 0.6-0.9 k at energy 0.99, drift
~7e-3 per period at lr 0.1), where warm starts do not pay and the CPU solves cold
(bench/RESULTS.md, "Warm starts in real TRP training").
"""
import functools
import math
import os
from collections import defaultdict

import pytest
import torch

from trp_ext import _reference as ref
from trp_ext import ops
from trp_ext.models import build_model
from trp_ext.selection import select_layers
from trp_ext.train import read_checkpoint
from conftest import CUDA, measure

ENERGY = 0.99
DRIFT = 1e-3
TAU_FRACTION = 1 / 8
CIFAR = ("resnet20", "resnet56")
IMAGENET = ("resnet18", "resnet50")
DEVICES = ["cpu", CUDA]


# ----------------------------------------------------------------------------- weight sets
def _decaying(shape, gen):
    m, n = shape
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    s = torch.exp(-torch.arange(k, dtype=torch.float64) / (TAU_FRACTION * k))
    return ((u * s) @ v.T).float().contiguous()


def _drift(mats, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(w + DRIFT * w.norm() / math.sqrt(w.numel()) * torch.randn(w.shape, generator=gen)).contiguous()
            for w in mats]


def _layer_shapes(arch, scheme):
    num_classes = 10 if arch in CIFAR else 1000
    model = build_model(arch, num_classes=num_classes)
    return [tuple(ref.conv_weight_to_matrix(m.weight, scheme).shape) for _, m in select_layers(model)]


@functools.lru_cache(maxsize=None)
def _synthetic(arch, scheme):
    gen = torch.Generator().manual_seed(0)
    return [_decaying(shape, gen) for shape in _layer_shapes(arch, scheme)]


@functools.lru_cache(maxsize=None)
def _trained(path):
    state = read_checkpoint(path)  # weights_only=True, and a clear error for a foreign file
    config, weights = state["config"], state["model"]
    # The network as trained: its input channels and classes from the weights (a run on the
    # built-in digits has 1-channel images, CIFAR-10 3-channel ones, ImageNet 1000 classes).
    model = build_model(config["arch"], num_classes=weights["fc.weight"].shape[0],
                        in_channels=weights["conv1.weight"].shape[1])
    model.load_state_dict(weights)
    mats = [ref.conv_weight_to_matrix(m.weight.detach(), config["scheme"]).contiguous().float()
            for _, m in select_layers(model)]
    return f"trained-{config['arch']}/{config['scheme']}", mats


@functools.lru_cache(maxsize=None)
def _scenario(key, device):
    """(weights before, their projection, bases) -> the matrices each variant is timed on."""
    if key.startswith("trained"):
        before = _trained(os.environ["TRP_BENCH_TRAINED"])[1]
    else:
        before = _synthetic(*key.split("/"))
    first = ops.lowrank_project(before, ENERGY)
    warm = _drift(first.projected, 1)
    second = ops.lowrank_project(warm, ENERGY, bases=first.bases)
    return {
        "warm": [w.to(device) for w in warm],
        "warm-unprojected": [w.to(device) for w in _drift(before, 1)],
        "bases": [b.to(device) for b in first.bases],
        "warm-steady": [w.to(device) for w in _drift(second.projected, 2)],
        "steady-bases": [b.to(device) for b in second.bases],
    }


def _cases():
    cases = [f"{arch}/{scheme}" for arch in CIFAR + IMAGENET for scheme in ref.SCHEMES]
    if os.environ.get("TRP_BENCH_TRAINED"):
        cases.append(_trained(os.environ["TRP_BENCH_TRAINED"])[0])
    return cases


def _rounds(key, variant):
    """(rounds, warm-up rounds). ImageNet sets hold 1536 x 1536 (spatial) and 512 x 4608
    (channel) matrices: the SVD baselines take ~15 s per call there, so they run once, and the
    whole bench stays at a few minutes."""
    if not any(arch in key for arch in IMAGENET):
        return 15, 2
    return (1, 0) if variant in ("loop", "batched-svd") else (2, 1)


# ----------------------------------------------------------------------------- baselines
def _energy_ranks(s):
    """The energy rule on rows of singular values (float64 sums), as torch ops."""
    c = torch.cumsum(s.double() ** 2, dim=-1)
    return (c < ENERGY * c[..., -1:]).sum(-1) + 1


def svd_loop(mats):
    """The published TRP code's projection: one SVD, rank and reconstruction per layer."""
    out = []
    for w in mats:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = int(_energy_ranks(s))  # a host sync per layer, as in the published code
        out.append((u[:, :r] * s[:r]) @ vh[:r])
    return out


def batched_svd(mats):
    """torch.linalg.svd batched per shape group, the same rule, reconstruction with masks."""
    groups = defaultdict(list)
    for i, w in enumerate(mats):
        groups[tuple(w.shape)].append(i)
    out = [None] * len(mats)
    for index in groups.values():
        u, s, vh = torch.linalg.svd(torch.stack([mats[i] for i in index]), full_matrices=False)
        ranks = _energy_ranks(s)
        # Reconstructed from the group's largest rank, the smaller ranks masked (one host sync per
        # group): all k columns would cost ~3x the needed multiplications at ranks ~0.29 k.
        top = int(ranks.max())
        keep = torch.arange(top, device=s.device) < ranks.unsqueeze(-1)
        p = (u[..., :top] * (s[..., :top] * keep).unsqueeze(-2)) @ vh[..., :top, :]
        for j, i in enumerate(index):
            out[i] = p[j]
    return out


# ----------------------------------------------------------------------------- benches
# The baselines each mode is compared with (one test per variant and case).
BASELINES = {
    "cold": ["loop", "batched-svd"],
    "warm": ["cold", "loop"],
    "warm-unprojected": ["cold"],
    "warm-steady": ["cold", "loop"],
}


def _run(benchmark, key, mode, variant, device):
    scenario = _scenario(key, device)
    mats = scenario["warm" if mode == "cold" else mode]
    rounds, warmup = _rounds(key, variant)
    # The device in the name (as in the other benches): a GPU run's groups would otherwise replace
    # the CPU's in report.py, which keys medians by group and variant.
    benchmark.group = f"{key} {mode}" if device == "cpu" else f"{key} {mode} {device}"
    calls = {
        "cold": lambda: ops.lowrank_project(mats, ENERGY),
        "loop": lambda: svd_loop(mats),
        "batched-svd": lambda: batched_svd(mats),
    }
    if variant != "ours":
        measure(benchmark, calls[variant], variant, device, rounds=rounds, warmup_rounds=warmup,
                layers=len(mats), mode=mode)
        return
    # Ours also times the baselines in alternation with its rounds, except on ImageNet sets, where
    # they take ~15 s a call and run once in their own tests.
    imagenet = any(arch in key for arch in IMAGENET)
    alternates = None if imagenet else {b: calls[b] for b in BASELINES[mode]}
    bases = None
    if mode != "cold":
        bases = scenario["steady-bases" if mode == "warm-steady" else "bases"]
    fn = functools.partial(ops.lowrank_project, mats, ENERGY, bases=bases)
    measure(benchmark, fn, "ours", device, rounds=rounds, warmup_rounds=warmup, alternates=alternates,
            layers=len(mats), mode=mode)
    if bases is not None:
        # How the warm starts fared, from one more call of its own (the alternating cold solves
        # count in the same process-wide counters); every call takes the same paths.
        ops.lowrank_project_stats(reset=True)
        fn()
        benchmark.extra_info.update(ops.lowrank_project_stats(reset=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["ours"] + BASELINES["cold"])
@pytest.mark.parametrize("key", _cases())
def test_cold(benchmark, key, variant, device):
    _run(benchmark, key, "cold", variant, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["ours"] + BASELINES["warm"])
@pytest.mark.parametrize("key", _cases())
def test_warm(benchmark, key, variant, device):
    _run(benchmark, key, "warm", variant, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["ours"] + BASELINES["warm-unprojected"])
@pytest.mark.parametrize("key", [f"resnet56/{scheme}" for scheme in ref.SCHEMES])
def test_warm_unprojected(benchmark, key, variant, device):
    _run(benchmark, key, "warm-unprojected", variant, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["ours"] + BASELINES["warm-steady"])
@pytest.mark.parametrize("key", [f"{arch}/{scheme}" for arch in CIFAR for scheme in ref.SCHEMES])
def test_warm_steady(benchmark, key, variant, device):
    _run(benchmark, key, "warm-steady", variant, device)
