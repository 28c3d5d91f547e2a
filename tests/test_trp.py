"""TRP: projection schedule, nuclear regularisation, AMP, channels_last, torch.compile, state."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trp_ext import TRP
from trp_ext import _reference as ref
from trp_ext.models import resnet20


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return resnet20(num_classes=10, **kwargs)


def _batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train_step(model, optimizer, trp, x, y, scaler=None):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    trp.regularize()
    optimizer.step()
    return trp.step()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_step_projects_every_period_to_reference(scheme):
    model = _model()
    trp = TRP(model, scheme=scheme, energy=0.8, period=3, lam=0.0)
    before = {name: m.weight.detach().clone() for name, m in trp.layers}
    assert [trp.step() for _ in range(2)] == [False, False]
    assert all(torch.equal(before[n], m.weight) for n, m in trp.layers)
    assert trp.step() is True
    assert len(trp.history) == 1 and trp.history[0]["step"] == 3
    for (name, module), rank in zip(trp.layers, trp.history[0]["ranks"]):
        matrix = ref.conv_weight_to_matrix(before[name], scheme)
        expected, expected_rank = ref.lowrank_project(matrix, 0.8)
        assert rank == expected_rank
        got = ref.conv_weight_to_matrix(module.weight.detach(), scheme)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(got.double(), rtol=1e-5).item() <= rank


def test_stride2_convs_are_projected():
    trp = TRP(_model(), period=1)
    assert "layer2.0.conv1" in trp.names and "conv1" not in trp.names


@pytest.mark.parametrize("subgradient", ["truncated", "full"])
def test_regularize_adds_exactly_lam_times_subgradient(subgradient):
    model = _model()
    trp = TRP(model, scheme="channel", energy=0.7, lam=0.01, subgradient=subgradient)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    grads = {n: m.weight.grad.clone() for n, m in trp.layers}
    trp.regularize()
    for name, module in trp.layers:
        matrix = ref.conv_weight_to_matrix(module.weight.detach(), "channel")
        if subgradient == "truncated":
            rank = ref.lowrank_project(matrix, 0.7)[1]
            sub = ref.nuclear_subgradient(matrix, rank=rank)
        else:
            sub = ref.nuclear_subgradient(matrix)
        expected = grads[name] + 0.01 * ref.matrix_to_conv_weight(sub, "channel", module.weight.shape)
        torch.testing.assert_close(module.weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_lam_zero_leaves_gradients_alone():
    model = _model()
    trp = TRP(model, lam=0.0)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    grads = [m.weight.grad.clone() for _, m in trp.layers]
    trp.regularize()
    assert all(torch.equal(g, m.weight.grad) for g, (_, m) in zip(grads, trp.layers))


def test_regularize_without_backward_raises():
    trp = TRP(_model())
    with pytest.raises(RuntimeError, match="no gradient"):
        trp.regularize()


def test_amp_scaled_gradients_get_an_unscaled_term():
    x, y = _batch()
    results = []
    for use_scaler in (False, True):
        model = _model()
        trp = TRP(model, lam=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if use_scaler else None
        loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        trp.regularize(scaler=scaler)
        if scaler:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(1024.0)  # what scaler.unscale_ does
        results.append([m.weight.grad.clone() for _, m in trp.layers])
    for plain, scaled in zip(*results):
        torch.testing.assert_close(plain, scaled, rtol=1e-4, atol=1e-7)


def test_amp_training_loop_with_autocast_runs():
    model = _model()
    trp = TRP(model, period=1, lam=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    trp.regularize()
    scaler.step(optimizer)
    scaler.update()
    assert trp.step() and all(torch.isfinite(m.weight).all() for _, m in trp.layers)


def test_channels_last_model_projects_like_contiguous_one():
    plain, cl = _model(), _model().to(memory_format=torch.channels_last)
    results = []
    for model in (plain, cl):
        trp = TRP(model, period=1, lam=0.0, energy=0.8)
        trp.step()
        results.append([m.weight.detach().contiguous() for _, m in trp.layers])
    assert cl.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_torch_compiled_model():
    model = _model()
    compiled = torch.compile(model, backend="aot_eager")
    trp = TRP(compiled, period=1, lam=1e-3, energy=0.8)
    assert trp.model is model and "layer1.0.conv1" in trp.names
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _batch()
    _train_step(compiled, optimizer, trp, x, y)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))
    matrix = ref.conv_weight_to_matrix(model.layer1[0].conv1.weight.detach(), "channel")
    assert torch.linalg.matrix_rank(matrix.double(), rtol=1e-5).item() <= trp.ranks["layer1.0.conv1"]


def test_ddp_style_wrapper_is_unwrapped():
    model = _model()
    wrapped = nn.DataParallel(model)
    assert TRP(wrapped).model is model


def test_state_dict_resume_is_exact():
    x, y = _batch()
    model_a = _model()
    trp_a = TRP(model_a, period=2, lam=1e-3)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        _train_step(model_a, opt_a, trp_a, x, y)
    model_b, opt_state, trp_state = copy.deepcopy(model_a), copy.deepcopy(opt_a.state_dict()), trp_a.state_dict()
    for _ in range(3):
        _train_step(model_a, opt_a, trp_a, x, y)
    trp_b = TRP(model_b, period=2, lam=1e-3)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9)
    opt_b.load_state_dict(opt_state)
    trp_b.load_state_dict(trp_state)
    for _ in range(3):
        _train_step(model_b, opt_b, trp_b, x, y)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert trp_a.history == trp_b.history and trp_a.steps == trp_b.steps == 6


def test_load_state_dict_rejects_other_config():
    state = TRP(_model(), energy=0.9).state_dict()
    with pytest.raises(ValueError, match="energy"):
        TRP(_model(), energy=0.8).load_state_dict(state)
    with pytest.raises(ValueError, match="other layers"):
        TRP(_model(), exclude="layer3.*", energy=0.9).load_state_dict(state)


@pytest.mark.parametrize("kwargs,arg", [({"energy": 0.0}, "energy"), ({"energy": 1.5}, "energy"),
                                        ({"period": 0}, "period"), ({"period": -1}, "period"),
                                        ({"period": 2.5}, "period"), ({"lam": -1.0}, "lam"),
                                        ({"scheme": "diagonal"}, "scheme"), ({"subgradient": "x"}, "subgradient"),
                                        ({"max_rank": -1}, "max_rank")])
def test_bad_arguments_raise(kwargs, arg):
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        TRP(_model(), **kwargs)


@pytest.mark.parametrize("kwargs,arg", [({"lam": float("inf")}, "lam"), ({"lam": float("nan")}, "lam"),
                                        ({"energy": float("nan")}, "energy"), ({"energy": True}, "energy"),
                                        ({"value_threshold": "0.1"}, "value_threshold"),
                                        ({"value_threshold": -1.0}, "value_threshold"),
                                        ({"max_rank": 2.0}, "max_rank"), ({"warm_start": "no"}, "warm_start")])
def test_more_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        TRP(_model(), **kwargs)


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    trp = TRP(_model(), energy=np.float32(0.9), period=np.int64(5), lam=np.float64(1e-3), max_rank=np.int64(4),
              value_threshold=np.float32(0.5))
    assert (trp.energy, trp.period, trp.max_rank) == (pytest.approx(0.9), 5, 4)
    assert type(trp.period) is int and type(trp.max_rank) is int and type(trp.value_threshold) is float


@pytest.mark.parametrize("kwargs,message", [
    ({"include": "nonexistent"}, "argument 'include': pattern 'nonexistent' matches no module"),
    ({"exclude": "layer_3.*"}, "argument 'exclude': pattern 'layer_3.*' matches no module"),
    ({"exclude": "layer3"}, "argument 'exclude': pattern 'layer3' matches the container 'layer3'.*'layer3.\\*'"),
])
def test_patterns_that_select_nothing_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TRP(_model(), **kwargs)


def test_include_of_a_layer_that_cannot_be_factored_raises():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Conv2d(8, 8, 3, padding="same"), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))
    for name, reason in [("2", "grouped conv"), ("3", "padding='same'"), ("4", "padding_mode='reflect'")]:
        with pytest.raises(ValueError, match=f"argument 'include'.*'{name}'.*{reason}"):
            TRP(model, include=name)
    assert TRP(model, exclude=["2", "3", "4"]).names == ["1"]  # excluding them is harmless


@pytest.mark.parametrize("caps", [{"max_rank": 2}, {"value_threshold": 1e3}])
def test_full_subgradient_ignores_the_rank_caps(caps):
    model = _model()
    plain, capped = TRP(model, lam=1.0, subgradient="full"), TRP(model, lam=1.0, subgradient="full", **caps)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    grads = {n: m.weight.grad.clone() for n, m in plain.layers}
    plain.regularize()
    full = {n: m.weight.grad - grads[n] for n, m in plain.layers}
    for _, module in plain.layers:
        module.weight.grad.zero_()
    capped.regularize()
    for name, module in capped.layers:
        torch.testing.assert_close(module.weight.grad, full[name], rtol=1e-5, atol=1e-7)


def test_regularize_skips_layers_without_a_gradient_and_changes_the_others_as_usual():
    model = _model()
    trp = TRP(model, energy=0.7, lam=0.1)
    frozen, unused = trp.layers[3][1].weight, trp.layers[-1][1].weight
    frozen.requires_grad_(False)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    assert frozen.grad is None
    unused.grad = None  # as for a branch this step's forward did not take
    grads = {n: m.weight.grad.clone() for n, m in trp.layers if m.weight.grad is not None}
    trp.regularize()  # no error: neither layer has an update to steer
    assert frozen.grad is None and unused.grad is None
    for name, module in trp.layers:
        if name not in grads:
            continue
        matrix = ref.conv_weight_to_matrix(module.weight.detach(), "channel")
        sub = ref.nuclear_subgradient(matrix, rank=ref.lowrank_project(matrix, 0.7)[1])
        expected = grads[name] + 0.1 * ref.matrix_to_conv_weight(sub, "channel", module.weight.shape)
        torch.testing.assert_close(module.weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_regularize_before_backward_raises_even_with_frozen_layers():
    trp = TRP(_model(), lam=0.1)
    trp.layers[0][1].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="the selected layers have no gradient; call it after backward"):
        trp.regularize()


def test_all_frozen_layers_regularize_to_nothing():
    model = _model()
    trp = TRP(model, lam=0.1)
    for _, module in trp.layers:
        module.weight.requires_grad_(False)
    trp.regularize()  # nothing to steer, and nothing wrong
    assert all(m.weight.grad is None for _, m in trp.layers)


@pytest.mark.parametrize("parametrize", ["weight_norm", "spectral_norm", "hook_weight_norm"])
def test_convs_with_computed_weights_are_not_selected(parametrize):
    """TRP would write a copy that the next forward recomputes, and decompose would drop the
    parametrization: neither selects such a layer, and from_conv says why."""
    from trp_ext import FactoredConv2d, decompose
    model = _model()
    conv = model.layer2[0].conv2
    if parametrize == "weight_norm":
        torch.nn.utils.parametrizations.weight_norm(conv)
    elif parametrize == "spectral_norm":
        torch.nn.utils.parametrizations.spectral_norm(conv)
    else:
        with pytest.warns(FutureWarning):
            torch.nn.utils.weight_norm(conv)
    trp = TRP(model, period=1)
    assert "layer2.0.conv2" not in trp.names and "layer2.0.conv1" in trp.names
    trp.step()  # the other layers project as usual
    with pytest.raises(ValueError, match="argument 'conv' cannot be factored: it is a layer .*weight"):
        FactoredConv2d.from_conv(conv, 2)
    with pytest.raises(ValueError, match="argument 'include'.*'layer2.0.conv2', which cannot be factored: "
                                         "it is a layer .*weight"):
        TRP(model, include="layer2.0.conv2")
    # In place: torch cannot deepcopy a model with hook-based weight_norm.
    _, report = decompose(model, energy=0.9, inplace=True)
    assert "layer2.0.conv2" not in {d.name for d in report.layers} and model.layer2[0].conv2 is conv


@pytest.mark.parametrize("change", ["resized", "scheme"])
def test_layers_whose_matrix_shape_changed_start_cold_and_project_exactly(change):
    model = _model()
    trp = TRP(model, energy=0.8, period=1, lam=0.0)
    trp.step()  # bases for the old shapes
    if change == "resized":  # e.g. a channel pruner narrowing a conv in place
        conv, bn = model.layer1[0].conv1, model.layer1[0].bn1
        keep = 12
        conv.weight = nn.Parameter(conv.weight.detach()[:keep].clone())
        conv.out_channels = keep
        model.layer1[0].conv2.weight = nn.Parameter(model.layer1[0].conv2.weight.detach()[:, :keep].clone())
        model.layer1[0].conv2.in_channels = keep
        for name in ("weight", "bias"):
            setattr(bn, name, nn.Parameter(getattr(bn, name).detach()[:keep].clone()))
        bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[:keep], bn.running_var[:keep], keep
    else:
        trp.scheme = "spatial"
    before = {name: m.weight.detach().clone() for name, m in trp.layers}
    assert trp.step()
    for (name, module), rank in zip(trp.layers, trp.history[-1]["ranks"]):
        matrix = ref.conv_weight_to_matrix(before[name], trp.scheme)
        expected, expected_rank = ref.lowrank_project(matrix, 0.8)
        assert rank == expected_rank
        torch.testing.assert_close(ref.conv_weight_to_matrix(module.weight.detach(), trp.scheme), expected,
                                   rtol=1e-4, atol=1e-5)
    x, _ = _batch()
    model(x)  # the resized model still runs
    assert trp.step()  # and warm-starts from the new shapes' bases


def test_a_layer_replaced_in_the_model_is_not_projected_silently():
    from trp_ext import decompose
    model = _model()
    trp = TRP(model, energy=0.8, period=1)
    trp.step()
    decompose(model, value_threshold=1e-2, inplace=True)
    with pytest.raises(RuntimeError, match="layer '.*' is no longer the module this TRP selected"):
        trp.step()


def test_model_converted_to_float64_after_a_projection_keeps_warm_starting():
    model = _model()
    trp = TRP(model, period=1, lam=1e-3)
    x, y = _batch()
    trp.step()
    model.double()
    F.cross_entropy(model(x.double()), y).backward()
    trp.regularize()
    assert trp.step() and all(m.weight.dtype == torch.float64 for _, m in trp.layers)


def test_state_dict_loads_into_a_float64_model_and_rejects_other_layer_sizes():
    x, y = _batch()
    trp = TRP(_model(), period=1)
    trp.step()
    state = trp.state_dict()
    model64 = _model().double()
    trp64 = TRP(model64, period=1)
    trp64.load_state_dict(state)
    assert trp64.step()
    wider = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    narrow = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    saved = TRP(wider, period=1)
    saved.step()
    with pytest.raises(ValueError, match="basis of layer '1'.*other layer sizes"):
        TRP(narrow, period=1).load_state_dict(saved.state_dict())


def test_unsupported_or_mixed_weight_dtypes_name_the_layer():
    model = _model()
    trp = TRP(model)
    trp.layers[2][1].to(torch.bfloat16)
    with pytest.raises(TypeError, match=f"layer '{trp.layers[2][0]}' has a torch.bfloat16 weight"):
        trp.project()
    trp.layers[2][1].to(torch.float64)
    with pytest.raises(TypeError, match=f"one dtype and device; layer '{trp.layers[2][0]}' is torch.float64"):
        trp.project()


def test_model_without_eligible_layers_raises():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="no eligible layers"):
        TRP(model)


def test_linear_layers_optional():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    trp = TRP(model, include_linear=True, period=1, energy=0.5, lam=0.0)
    trp.step()
    assert trp.names == ["1", "3"]
    assert torch.linalg.matrix_rank(model[1].weight.detach().double(), rtol=1e-5).item() == trp.ranks["1"]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_layer_matrix_shape_is_the_built_matrix_shape(scheme):
    # TRP plans shards from these shapes without building the matrices.
    from trp_ext.lowrank import layer_matrix, layer_matrix_shape, matrix_to_layer_weight

    for module in (nn.Conv2d(5, 7, 3), nn.Conv2d(4, 6, (3, 5), stride=2), nn.Conv2d(3, 2, (1, 4)), nn.Linear(9, 4)):
        matrix = layer_matrix(module, scheme)
        assert layer_matrix_shape(module, scheme) == tuple(matrix.shape)
        assert torch.equal(matrix_to_layer_weight(matrix, module, scheme), module.weight.detach())
