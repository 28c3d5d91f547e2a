"""TRP: Trained Rank Pruning inside any training loop.

    trp = trp_ext.TRP(model)                      # paper defaults, see TRP.__init__
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.regularize()                          # += lam * nuclear-norm sub-gradient
        optimizer.step()
        trp.step()                                # every `period` calls: project all layers

With AMP, either call ``trp.regularize()`` after ``scaler.unscale_(optimizer)``, or pass
``trp.regularize(scaler=scaler)`` while the gradients are still scaled: either way the update
gains exactly ``lam * subgradient`` after unscaling.
"""
import torch
import torch.nn as nn

from trp_ext import distributed, ops
from trp_ext.lowrank import check_scheme, layer_matrix, layer_matrix_shape, matrix_to_layer_weight
from trp_ext.selection import select_layers

SUBGRADIENTS = ("truncated", "full")
DISTRIBUTED_MODES = ("auto", "shard", "replicate")


def unwrap_model(model):
    """The module that owns the parameters: strips torch.compile and DDP/DataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


class TRP:
    """Trained Rank Pruning for the selected layers of ``model``.

    Args (defaults follow the paper's CIFAR-10 regime and its published code):
        model: any ``nn.Module``; torch.compile'd and DDP-wrapped models are unwrapped.
        scheme: "channel" (W as n x c*kh*kw) or "spatial" (W as c*kh x kw*n). Default "channel".
        energy: kept energy fraction e of the rank rule, in (0, 1]. Default 0.99, the threshold of
            the published TRP training code.
        period: project every ``period``-th call of :meth:`step` (the paper's m). Default 20.
        lam: nuclear-norm weight lambda; 0 turns regularisation off. Default 3e-4, the paper's
            and published code's CIFAR-10 value ("TRP+Nu").
        subgradient: "truncated" (U_r V_r^T at the energy rank, as the published code adds) or
            "full" (U V^T over every non-negligible singular value). Default "truncated".
        value_threshold, max_rank: optional extra caps of the rank rule (see lowrank_project).
        include, exclude, predicate, include_linear: layer selection (see trp_ext.selection);
            by default every conv larger than 1x1 except the first conv.
        warm_start: warm-start each projection from the previous one's bases. Default True.
        distributed: under torch.distributed with several ranks, "shard" splits the projection
            work among the ranks (balanced by cost) and all-gathers the results, "replicate" has
            every rank project every layer, "auto" (default) picks by the cost model in
            trp_ext.distributed. Either way every rank ends with bit-identical weights.
    """

    def __init__(self, model, scheme="channel", energy=0.99, period=20, lam=3e-4, subgradient="truncated",
                 value_threshold=None, max_rank=None, include=None, exclude=None, predicate=None,
                 include_linear=False, warm_start=True, distributed="auto"):
        check_scheme(scheme)
        if not (isinstance(energy, (int, float)) and 0.0 < energy <= 1.0):
            raise ValueError(f"argument 'energy' must lie in (0, 1], got {energy!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"argument 'period' must be a positive integer, got {period!r}")
        if not (isinstance(lam, (int, float)) and lam >= 0.0):
            raise ValueError(f"argument 'lam' must be a non-negative number, got {lam!r}")
        if subgradient not in SUBGRADIENTS:
            raise ValueError(f"argument 'subgradient' must be one of {SUBGRADIENTS}, got {subgradient!r}")
        if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 0):
            raise ValueError(f"argument 'max_rank' must be a non-negative integer, got {max_rank!r}")
        if value_threshold is not None and not value_threshold >= 0.0:
            raise ValueError(f"argument 'value_threshold' must be non-negative, got {value_threshold!r}")
        if distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"argument 'distributed' must be one of {DISTRIBUTED_MODES}, got {distributed!r}")
        self.model = unwrap_model(model)
        self.scheme, self.energy, self.period, self.lam = scheme, float(energy), period, float(lam)
        self.subgradient, self.value_threshold, self.max_rank = subgradient, value_threshold, max_rank
        self.warm_start, self.distributed = warm_start, distributed
        self.layers = select_layers(self.model, include, exclude, predicate, include_linear)
        if not self.layers:
            raise ValueError("argument 'model' has no eligible layers: TRP needs at least one conv larger than "
                             "1x1 besides the first conv (or pass include=/predicate=/include_linear=True)")
        self.names = [name for name, _ in self.layers]
        self.steps = 0
        self.history = []  # one entry per projection: {"step": int, "ranks": [int per layer]}
        self.matrices_projected = 0  # matrices this process handed to lowrank_project, all calls
        self._bases = {"project": None, "regularize": None}
        self._plan = None  # ShardPlan when this process projects only its share
        self._mode = None
        self._shapes = None  # the layers' matrix shapes, for the shard plan and the all-gathers

    # ------------------------------------------------------------------ projection
    def _resolve_mode(self):
        """Shard or replicate; decided once, from shapes alone, so every rank decides alike."""
        if self._mode is None:
            world = distributed.world_size()
            shapes = self._shapes = [layer_matrix_shape(module, self.scheme) for _, module in self.layers]
            weight = self.layers[0][1].weight
            mode = self.distributed
            if world <= 1:
                mode = "replicate"
            elif mode == "auto":
                mode = distributed.choose_mode(shapes, weight.element_size(), world, weight.device.type)
            self._mode = mode
            self._plan = distributed.plan_shards(shapes, world) if mode == "shard" else None
        return self._mode

    def _lowrank(self, purpose, energy, want_subgradient):
        """One batched lowrank_project call, warm-started per purpose; sharded across ranks when
        that pays. Returns (per-layer projections or sub-gradients, int64 ranks; None for the
        sub-gradients of a sharded run, whose ranks nobody reads)."""
        mine = list(range(len(self.layers))) if self._resolve_mode() == "replicate" else \
            self._plan.owned(distributed.rank())
        # Only this process's matrices: under sharding the others' would be built for nothing
        # (in the spatial scheme each one is a copy of its weight).
        mats = [layer_matrix(self.layers[i][1], self.scheme) for i in mine]
        weight = self.layers[0][1].weight
        if mats:
            bases = self._bases[purpose] if self.warm_start else None
            result = ops.lowrank_project(mats, energy, self.value_threshold, self.max_rank,
                                         bases=bases, want_subgradient=want_subgradient)
            outputs, ranks, new_bases = list(result.subgradients if want_subgradient else result.projected), \
                result.ranks, result.bases
        else:  # a rank with no layer of its own (more ranks than layers) still joins the gathers
            outputs, ranks, new_bases = [], torch.empty(0, dtype=torch.long, device=weight.device), []
        self.matrices_projected += len(mine)
        self._bases[purpose] = list(new_bases) if self.warm_start and new_bases else None
        if self._plan is None:
            return outputs, ranks
        outputs = distributed.all_gather_results(self._plan, mine, outputs, self._shapes, weight.dtype,
                                                 weight.device)
        if purpose != "project":  # regularize() runs every step and does not use the ranks
            return outputs, None
        return outputs, distributed.all_gather_ranks(self._plan, mine, ranks, weight.device)

    @torch.no_grad()
    def project(self):
        """Projects every selected weight onto its truncated SVD now; returns {name: rank}."""
        projections, ranks = self._lowrank("project", self.energy, want_subgradient=False)
        for (_, module), projected in zip(self.layers, projections):
            module.weight.copy_(matrix_to_layer_weight(projected, module, self.scheme))
        ranks = [int(r) for r in ranks.tolist()]
        self.history.append({"step": self.steps, "ranks": ranks})
        return dict(zip(self.names, ranks))

    def step(self):
        """Call after ``optimizer.step()``. Projects on every ``period``-th call; returns whether it did."""
        self.steps += 1
        if self.steps % self.period:
            return False
        self.project()
        return True

    # ------------------------------------------------------------------ regularisation
    @torch.no_grad()
    def regularize(self, scaler=None):
        """Adds ``lam * subgradient`` to each selected weight's gradient. Call after ``backward()``.

        scaler: a ``torch.amp.GradScaler`` whose scale the gradients still carry; the term is then
        scaled alike, so that it is exactly ``lam * subgradient`` after unscaling. Leave it None
        when the gradients are unscaled (no AMP, or after ``scaler.unscale_(optimizer)``).
        """
        if self.lam == 0.0:
            return
        energy = self.energy if self.subgradient == "truncated" else 1.0
        subgradients, _ = self._lowrank("regularize", energy, want_subgradient=True)
        weight = self.lam
        if scaler is not None and scaler.is_enabled():
            weight = weight * float(scaler.get_scale())
        for (name, module), sub in zip(self.layers, subgradients):
            if module.weight.grad is None:
                raise RuntimeError(f"TRP.regularize(): layer '{name}' has no gradient; call it after backward()")
            module.weight.grad.add_(matrix_to_layer_weight(sub, module, self.scheme), alpha=weight)

    # ------------------------------------------------------------------ reporting and state
    @property
    def ranks(self):
        """{name: rank} of the last projection (empty before the first)."""
        return dict(zip(self.names, self.history[-1]["ranks"])) if self.history else {}

    def mean_rank(self):
        return sum(self.history[-1]["ranks"]) / len(self.names) if self.history else float("nan")

    def _gathered_bases(self):
        """Warm-start bases for the state dict. Sharded, each rank holds only its share's, so all
        ranks' lists are gathered (a collective: under sharding call state_dict on every rank)."""
        own = {k: (None if v is None else [b.detach().cpu().clone() for b in v]) for k, v in self._bases.items()}
        if self._plan is None:
            return own
        per_rank = [None] * self._plan.world
        torch.distributed.all_gather_object(per_rank, own)
        return {k: {"world": self._plan.world, "per_rank": [p[k] for p in per_rank]} for k in own}

    def state_dict(self):
        return {
            "config": {"scheme": self.scheme, "energy": self.energy, "period": self.period, "lam": self.lam,
                       "subgradient": self.subgradient, "value_threshold": self.value_threshold,
                       "max_rank": self.max_rank, "warm_start": self.warm_start},
            "layers": list(self.names),
            "steps": self.steps,
            "history": [{"step": h["step"], "ranks": list(h["ranks"])} for h in self.history],
            "bases": self._gathered_bases(),
        }

    def load_state_dict(self, state):
        if list(state["layers"]) != self.names:
            raise ValueError("TRP.load_state_dict(): the saved state selects other layers than this TRP "
                             f"({len(state['layers'])} saved, {len(self.names)} here)")
        for key, value in state["config"].items():
            if getattr(self, key) != value:
                raise ValueError(f"TRP.load_state_dict(): saved {key}={value!r} differs from this TRP's "
                                 f"{getattr(self, key)!r}")
        self.steps = int(state["steps"])
        self.history = [{"step": int(h["step"]), "ranks": [int(r) for r in h["ranks"]]} for h in state["history"]]
        self._resolve_mode()
        device = self.layers[0][1].weight.device  # a checkpoint may be loaded onto another device
        self._bases = {}
        for purpose, saved in state["bases"].items():
            if isinstance(saved, dict):  # saved sharded: usable only with the same world size
                same_world = self._plan is not None and saved["world"] == self._plan.world
                saved = saved["per_rank"][distributed.rank()] if same_world else None
            elif self._plan is not None:
                saved = None  # replicated bases cover every layer; a shard needs its own (cold start once)
            self._bases[purpose] = None if saved is None else [b.to(device, copy=True) for b in saved]
