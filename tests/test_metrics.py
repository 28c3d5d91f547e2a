"""FLOPs/params counting and speedups."""
import pytest
import torch
import torch.nn as nn

from trp_ext import FactoredConv2d
from trp_ext.metrics import (accuracy, compare_latency, count_cost, deployment_form, measure_latency,
                             theoretical_speedup)
from trp_ext.models import resnet20, resnet56


def test_cifar_resnet_flops_match_the_literature():
    # He et al.: ResNet-20 about 41M, ResNet-56 about 125M multiply-adds on 32x32 inputs.
    x = torch.zeros(1, 3, 32, 32)
    assert abs(count_cost(resnet20(), x).conv_macs / 1e6 - 40.6) < 1.0
    assert abs(count_cost(resnet56(), x).conv_macs / 1e6 - 125.5) < 2.0


def test_factored_conv_macs():
    x = torch.zeros(2, 8, 10, 12)
    channel = FactoredConv2d(8, 16, 4, 3, stride=2, padding=1, scheme="channel")
    spatial = FactoredConv2d(8, 16, 4, 3, stride=2, padding=1, scheme="spatial")
    # output 5 x 6 pixels; channel: r*c*9 + n*r per output pixel.
    assert count_cost(nn.Sequential(channel), x).conv_macs == 30 * (4 * 8 * 9 + 16 * 4)
    # spatial: first stage (5 rows x 12 input columns) * r*c*3, then 30 pixels * n*r*3.
    assert count_cost(nn.Sequential(spatial), x).conv_macs == 60 * 4 * 8 * 3 + 30 * 16 * 4 * 3


@pytest.mark.parametrize("scheme", [None, "channel", "spatial"])
def test_deployed_graphs_cost_what_their_models_cost(scheme):
    # A deployed graph calls its convs as functions: counted by module hooks, it had none, and a
    # speedup against it came out at 40 million.
    from trp_ext import decompose

    torch.manual_seed(0)
    model = resnet20().eval()
    if scheme is not None:
        model, _ = decompose(model, scheme, energy=0.7)
    x = torch.zeros(2, 3, 32, 32)
    assert count_cost(deployment_form(model), x).conv_macs == count_cost(model, x).conv_macs > 0


def test_functional_convs_and_matmuls_are_counted():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))
            self.head = nn.Parameter(torch.randn(8, 5))

        def forward(self, x):
            y = torch.nn.functional.conv2d(x, self.weight, stride=2, padding=1)  # 8 x 4 x 5 output
            return y.mean(dim=(2, 3)) @ self.head

    cost = count_cost(Functional(), torch.zeros(3, 3, 8, 10))
    assert (cost.conv_macs, cost.linear_macs) == (4 * 5 * 8 * 27, 8 * 5)


def test_speedup_and_latency_and_accuracy():
    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1))
    factored = nn.Sequential(FactoredConv2d(3, 16, 2, 3, padding=1))
    x = torch.zeros(1, 3, 8, 8)
    assert theoretical_speedup(count_cost(dense, x), count_cost(factored, x)) == (16 * 27) / (2 * 27 + 16 * 2)
    assert measure_latency(dense, x, repeats=3, warmup=1) > 0
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        classifier[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        classifier[1].bias.zero_()
    batches = [(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.tensor([0, 0]))]
    assert accuracy(classifier, batches) == 50.0


def test_deployment_form_folds_batchnorm_and_keeps_outputs():
    torch.manual_seed(0)
    model = resnet20()
    for module in model.modules():  # non-trivial running statistics, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    deployed = deployment_form(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)


def test_deployment_form_of_an_untraceable_model_is_an_unfolded_copy():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # fx cannot trace the branch

    model = DataDependent().eval()
    deployed = deployment_form(model)
    assert deployed is not model and isinstance(deployed.bn, nn.BatchNorm2d)


class _ConvCalledTwice(nn.Module):
    """One conv applied twice, a BN after each call (as a recurrent or weight-tied block)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv(torch.relu(self.bn1(self.conv(x)))))


def _conv_bn(conv_hook=None, bn_hook=None):
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    if conv_hook:
        conv_hook(model[0])
    if bn_hook:
        bn_hook(model[1])
    return model


def _pruned(conv):
    import torch.nn.utils.prune as prune

    prune.l1_unstructured(conv, "weight", 0.5)


class _WeightStandardisedConv(nn.Conv2d):
    """Keeps nn.Conv2d's forward but standardises the weight in _conv_forward, as such convs do."""

    def _conv_forward(self, x, weight, bias):
        mean, std = weight.mean(dim=(1, 2, 3), keepdim=True), weight.std(dim=(1, 2, 3), keepdim=True)
        return super()._conv_forward(x, (weight - mean) / (std + 1e-5), bias)


DEPLOYMENT_CASES = {
    "weight-standardised conv": lambda: nn.Sequential(_WeightStandardisedConv(4, 4, 3), nn.BatchNorm2d(4)),
    "conv called twice": _ConvCalledTwice,
    "hooked conv": lambda: _conv_bn(lambda c: c.register_forward_hook(lambda m, i, o: o * 2)),
    "hooked BN": lambda: _conv_bn(bn_hook=lambda b: b.register_forward_hook(lambda m, i, o: o.clamp(min=0))),
    "pruned conv": lambda: _conv_bn(_pruned),
    "parametrized conv": lambda: _conv_bn(lambda c: torch.nn.utils.parametrizations.weight_norm(c)),
}


@pytest.mark.parametrize("case", DEPLOYMENT_CASES)
def test_deployment_form_folds_only_what_folds_exactly(case):
    # torch.fx's fuse folded these too: the deployed copy computed another function (a conv called
    # twice got one BN in both calls, hooks were lost) or failed when called (pruned conv).
    torch.manual_seed(0)
    model = DEPLOYMENT_CASES[case]()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(deployment_form(model)(x), expected, rtol=1e-5, atol=1e-5)


def test_a_hooked_relu_after_a_factored_conv_keeps_its_hook():
    model = nn.Sequential(FactoredConv2d(4, 4, 2, 3, padding=1), nn.ReLU()).eval()
    model[1].register_forward_hook(lambda m, i, o: o * 3)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployment_form(model)(x), model(x), rtol=0, atol=0)


def test_deployment_form_folds_like_torch_fx_where_both_fold():
    from torch.fx.experimental.optimization import fuse

    torch.manual_seed(0)
    model = resnet20()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deployment_form(model)(x), fuse(model)(x))


def test_metrics_leave_every_module_in_its_own_mode():
    # model.train(flag) afterwards set them all alike: a BatchNorm frozen for fine-tuning came
    # back in training mode, and measure_latency and accuracy left the model in eval mode.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2), nn.Dropout())
    x = torch.zeros(2, 3, 5, 5)
    model(x)
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    count_cost(model, x)
    measure_latency(model, x, repeats=1, warmup=0)
    accuracy(model, [(x, torch.zeros(2, dtype=torch.long))])
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("labels", [torch.zeros(4, 1, dtype=torch.long), torch.eye(4, dtype=torch.long)])
def test_accuracy_refuses_labels_that_are_not_one_index_per_sample(labels):
    # (N, 1) labels broadcast against the (N,) predictions: an "accuracy" of 400%.
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="argument 'batches': labels of shape"):
        accuracy(classifier, [(torch.zeros(4, 4), labels)])


def test_compare_latency_times_both_models():
    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
    factored = nn.Sequential(FactoredConv2d(3, 16, 2, 3, padding=1))
    dense_s, factored_s = compare_latency(dense, factored, torch.zeros(1, 3, 8, 8), repeats=3, warmup=1)
    assert dense_s > 0 and factored_s > 0


def test_compress_and_report_leaves_every_module_in_its_mode():
    """It put the caller's model in eval mode for good; a BatchNorm frozen in eval inside a training
    model must come back so too."""
    from trp_ext.data import load_digits
    from trp_ext.models import build_model
    from trp_ext.report import compress_and_report
    from trp_ext.train import TrainConfig

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).train()
    model.layer1[0].bn1.eval()
    modes = [m.training for m in model.modules()]
    config = TrainConfig(arch="resnet20", scheme="channel", latency_batch=1)
    report = compress_and_report(model, config, lambda m: 0.0, load_digits(), torch.device("cpu"), latency_repeats=1)
    assert report.compressed is not None
    assert [m.training for m in model.modules()] == modes
