"""Compress a trained model and report dense vs compressed: accuracy, ranks, FLOPs, latency."""
from dataclasses import dataclass
from typing import Optional

import torch

from trp_ext.decompose import decompose
from trp_ext.metrics import (compare_latency, count_cost, deployment_form, eval_mode, measure_latency,
                             theoretical_speedup)


@dataclass
class Report:
    summary: dict
    compressed: Optional[torch.nn.Module]


def rank_rule(config, trained_with_trp=None):
    """The decomposition rank rule: a TRP-trained net is already low-rank, so its ranks come from
    the value threshold alone; a baseline (or a run without a value threshold) uses the energy."""
    trained_with_trp = config.scheme != "none" if trained_with_trp is None else trained_with_trp
    if trained_with_trp and config.value_threshold is not None:
        return {"energy": None, "value_threshold": config.value_threshold}
    return {"energy": config.energy, "value_threshold": config.value_threshold}


def latency_pair(dense, compressed, example, repeats):
    """Dense and compressed seconds per forward pass, both BN-folded, timed in alternation."""
    if compressed is None:
        return measure_latency(deployment_form(dense), example, repeats=repeats), None
    return compare_latency(dense, compressed, example, repeats=repeats)


def compress_and_report(model, config, evaluate, dataset, device, latency_repeats=20, rule=None):
    """Decomposes ``model`` per ``config`` (scheme, energy, value_threshold), then measures both.
    ``rule``: decompose's rank-rule arguments, if not ``rank_rule(config)``. ``model`` is measured
    in eval mode and left in the mode it came in."""
    with eval_mode(model):
        return _compress_and_report(model, config, evaluate, dataset, device, latency_repeats, rule)


def _compress_and_report(model, config, evaluate, dataset, device, latency_repeats, rule):
    example = torch.zeros((1, dataset.in_channels, *dataset.image_size), device=device)
    summary = {"arch": config.arch, "data": config.data, "scheme": config.scheme,
               "dense_accuracy": evaluate(model)}
    dense_cost = count_cost(model, example)
    summary.update(dense_conv_macs=dense_cost.conv_macs, dense_params=dense_cost.params)
    compressed = None
    if config.scheme != "none":
        rule = rank_rule(config) if rule is None else rule
        compressed, decomposition = decompose(model, config.scheme, **rule, fold_bn=True)
        compressed.eval()
        cost = count_cost(compressed, example)
        summary.update(
            compressed_accuracy=evaluate(compressed),
            mean_rank=decomposition.mean_rank(),
            compressed_conv_macs=cost.conv_macs,
            compressed_params=cost.params,
            flops_speedup=theoretical_speedup(dense_cost, cost),
            kept_dense=[d.name for d in decomposition.kept_dense],
            layers=decomposition.to_dict()["layers"],
        )
    for batch in sorted({1, config.latency_batch}):
        inputs = example.expand(batch, *example.shape[1:]).contiguous()
        dense_s, compressed_s = latency_pair(model, compressed, inputs, latency_repeats)
        summary[f"dense_latency_ms_b{batch}"] = dense_s * 1e3
        if compressed_s is not None:
            summary[f"compressed_latency_ms_b{batch}"] = compressed_s * 1e3
            summary[f"measured_speedup_b{batch}"] = dense_s / compressed_s
    summary["device"] = str(device)
    return Report(summary, compressed)


def format_table(summary):
    """The short terminal table that ends a run."""
    rows = [("accuracy (%)", f"{summary['dense_accuracy']:.2f}", _get(summary, "compressed_accuracy", "{:.2f}"))]
    rows.append(("mean rank", "full", _get(summary, "mean_rank", "{:.2f}")))
    rows.append(("conv MFLOPs", f"{2 * summary['dense_conv_macs'] / 1e6:.2f}",
                 _get(summary, "compressed_conv_macs", "{:.2f}", scale=2e-6)))
    rows.append(("FLOPs speedup", "1.00x", _get(summary, "flops_speedup", "{:.2f}x")))
    for key in sorted(k for k in summary if k.startswith("dense_latency_ms_b")):
        batch = key.rsplit("_b", 1)[1]
        rows.append((f"latency b={batch} (ms)", f"{summary[key]:.3f}",
                     _get(summary, f"compressed_latency_ms_b{batch}", "{:.3f}")))
        rows.append((f"measured speedup b={batch}", "1.00x", _get(summary, f"measured_speedup_b{batch}", "{:.2f}x")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'dense':>10}  {'compressed':>10}"]
    lines += [f"{name:{width}}  {dense:>10}  {compressed:>10}" for name, dense, compressed in rows]
    if summary.get("kept_dense"):
        lines.append(f"kept dense (past break-even): {', '.join(summary['kept_dense'])}")
    return "\n".join(lines)


def _get(summary, key, fmt, scale=1.0):
    value = summary.get(key)
    return "-" if value is None else fmt.format(value * scale)
