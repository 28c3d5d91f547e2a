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
import math

import torch
import torch.nn as nn

from trp_ext import distributed, ops
from trp_ext.lowrank import (check_rank_rule, check_scheme, is_integer, is_real, layer_matrix, layer_matrix_shape,
                             matrix_to_layer_weight)
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
        check_rank_rule(energy, value_threshold, max_rank)  # Python and NumPy scalars alike
        if not (is_integer(period) and period >= 1):
            raise ValueError(f"argument 'period' must be a positive integer, got {period!r}")
        if not (is_real(lam) and 0.0 <= lam < math.inf):
            raise ValueError(f"argument 'lam' must be a finite non-negative number, got {lam!r}")
        if subgradient not in SUBGRADIENTS:
            raise ValueError(f"argument 'subgradient' must be one of {SUBGRADIENTS}, got {subgradient!r}")
        if not isinstance(warm_start, bool):
            raise ValueError(f"argument 'warm_start' must be True or False, got {warm_start!r}")
        if distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"argument 'distributed' must be one of {DISTRIBUTED_MODES}, got {distributed!r}")
        self.model = unwrap_model(model)
        self.scheme, self.energy, self.period, self.lam = scheme, float(energy), int(period), float(lam)
        self.subgradient = subgradient
        self.value_threshold = None if value_threshold is None else float(value_threshold)
        self.max_rank = None if max_rank is None else int(max_rank)
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
        self._layout = None  # (scheme, weight shapes) that _shapes, the plan and the bases were made for

    # ------------------------------------------------------------------ projection
    def _resolve_mode(self):
        """Shard or replicate; decided from shapes alone, so every rank decides alike. Decided again
        when the layers' matrix shapes change (a layer resized in place, or another scheme): the
        shard plan and the warm-start bases of the old shapes no longer fit, so both are dropped."""
        # Weight shapes and scheme, not matrix shapes: this runs on every regularize() call, and
        # the weights' sizes are cheaper to read than the matrices' to derive.
        layout = (self.scheme, [module.weight.shape for _, module in self.layers])
        if self._mode is not None and layout != self._layout:
            self._mode = None
            self._bases = {"project": None, "regularize": None}  # the next projection starts cold
        if self._mode is None:
            world = distributed.world_size()
            self._layout = layout
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

    def _owned(self):
        """Indices of the layers this process projects: all of them, or its shard's."""
        if self._resolve_mode() == "replicate":
            return list(range(len(self.layers)))
        return self._plan.owned(distributed.rank())

    def _lowrank(self, purpose, energy, want_subgradient, capped=True):
        """One batched lowrank_project call, warm-started per purpose; sharded across ranks when
        that pays. Returns (per-layer projections or sub-gradients, int64 ranks; None for the
        sub-gradients of a sharded run, whose ranks nobody reads). capped: apply value_threshold
        and max_rank besides the energy rule."""
        mine = self._owned()
        # Only this process's matrices: under sharding the others' would be built for nothing
        # (in the spatial scheme each one is a copy of its weight).
        self._check_weights()
        mats = [layer_matrix(self.layers[i][1], self.scheme) for i in mine]
        weight = self.layers[0][1].weight
        if mats:
            bases = self._bases[purpose] if self.warm_start else None
            if bases is not None and (bases[0].dtype, bases[0].device) != (mats[0].dtype, mats[0].device):
                # The model moved, or changed dtype, since they were made (the mats share both).
                bases = [b.to(device=mats[0].device, dtype=mats[0].dtype) for b in bases]
            result = ops.lowrank_project(mats, energy, self.value_threshold if capped else None,
                                         self.max_rank if capped else None,
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

    def _check_weights(self):
        """lowrank_project takes one list of float32 or float64 matrices on one device: say which
        layer breaks that, in the model's terms rather than the op's."""
        first_name, first = self.layers[0][0], self.layers[0][1].weight
        for name, module in self.layers:
            w = module.weight
            if w.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"TRP: layer '{name}' has a {w.dtype} weight; TRP projects float32 or float64 "
                                "weights (with AMP, keep the model's weights in float32)")
            if w.dtype != first.dtype or w.device != first.device:
                raise TypeError(f"TRP: the selected layers must share one dtype and device; layer '{name}' is "
                                f"{w.dtype} on {w.device}, layer '{first_name}' {first.dtype} on {first.device}")

    def _check_layers_in_model(self):
        """A layer replaced in the model since this TRP selected it (decompose(inplace=True), a
        swapped submodule) would otherwise be projected in its detached old module, silently, while
        the model trains the new one. Checked once per projection: regularize() skips such a layer
        anyway, as it gets no gradient."""
        for name, module in self.layers:
            try:
                current = self.model.get_submodule(name)
            except AttributeError:
                current = None
            if current is not module:
                raise RuntimeError(f"TRP: layer '{name}' is no longer the module this TRP selected: it was replaced "
                                   "or removed (e.g. by decompose(inplace=True)); create a new TRP for the model")

    @torch.no_grad()
    def project(self):
        """Projects every selected weight onto its truncated SVD now; returns {name: rank}. Frozen
        layers (requires_grad=False) are projected too: TRP's low rank is a constraint on the
        selected layers, not an update; leave a layer out with ``exclude=`` instead."""
        self._check_layers_in_model()
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
        Layers without a gradient (frozen, or unused by this step's forward) are skipped.

        scaler: a ``torch.amp.GradScaler`` whose scale the gradients still carry; the term is then
        scaled alike, so that it is exactly ``lam * subgradient`` after unscaling. Leave it None
        when the gradients are unscaled (no AMP, or after ``scaler.unscale_(optimizer)``).
        """
        if self.lam == 0.0:
            return
        # Like torch.optim, a layer without a gradient gets no term: a frozen layer
        # (requires_grad=False) has no update to steer, nor has one that this step's forward did
        # not use (a branch not taken; DDP with find_unused_parameters). But when no trainable
        # layer has a gradient, regularize() came before backward(): say so, and change nothing.
        trained = [module.weight.requires_grad and module.weight.grad is not None for _, module in self.layers]
        if not any(trained):
            if any(module.weight.requires_grad for _, module in self.layers):
                raise RuntimeError("TRP.regularize(): the selected layers have no gradient; call it after backward()")
            return  # every selected layer frozen (alike on every rank): no term to compute
        if self.subgradient == "truncated":
            subgradients, _ = self._lowrank("regularize", self.energy, want_subgradient=True)
        else:  # U V^T over every non-negligible singular value: no rank rule, no caps
            subgradients, _ = self._lowrank("regularize", 1.0, want_subgradient=True, capped=False)
        weight = self.lam
        if scaler is not None and scaler.is_enabled():
            weight = weight * float(scaler.get_scale())
        for (_, module), sub, needed in zip(self.layers, subgradients, trained):
            if needed:
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
        mine = self._owned()  # resolves the mode: whether this process holds a shard's bases
        # A checkpoint may be loaded onto another device or into a model of another dtype.
        weight = self.layers[0][1].weight
        bases = {}
        for purpose, saved in state["bases"].items():
            if isinstance(saved, dict):  # saved sharded: usable only with the same world size
                same_world = self._plan is not None and saved["world"] == self._plan.world
                saved = saved["per_rank"][distributed.rank()] if same_world else None
            elif self._plan is not None:
                saved = None  # replicated bases cover every layer; a shard needs its own (cold start once)
            if saved is not None:
                self._check_bases(saved, mine)
            bases[purpose] = None if saved is None else [b.to(weight.device, weight.dtype, copy=True) for b in saved]
        self._bases = bases

    def _check_bases(self, bases, indices):
        """Saved bases must fit the layers they warm-start (min(m, n) rows, at most as many columns)."""
        if len(bases) != len(indices):
            raise ValueError(f"TRP.load_state_dict(): the saved state holds {len(bases)} warm-start bases for "
                             f"{len(indices)} layers")
        for basis, i in zip(bases, indices):
            name, module = self.layers[i]
            rows = min(layer_matrix_shape(module, self.scheme))
            if basis.dim() != 2 or basis.shape[0] != rows or basis.shape[1] > rows:
                raise ValueError(f"TRP.load_state_dict(): the saved warm-start basis of layer '{name}' has shape "
                                 f"{tuple(basis.shape)}, which does not fit the layer ({rows} rows expected): "
                                 "the state comes from a model with other layer sizes")
