"""Turns pytest-benchmark JSON into the ratio tables of bench/RESULTS.md.

    python bench/report.py bench/latest.json [--filter NAME] [--fma-peak GFLOPS]

One row per group (a case); a column per variant with its median in ms; then, for each baseline
variant, the ratio baseline / ours (above 1 means ours is faster); realisation where the group has
a flop_ratio and a dense variant; and the median of each ratio column over all rows.

Where ours' test also timed every variant in alternation, call by call (extra_info
"alternating_ms", see bench/conftest.py), a second table gives the same columns from those
medians: all of one time window, each call after another variant's.

With --fma-peak GFLOPS (the machine's multiply-add peak, all cores the bench used, counting a
multiply-add as two FLOPs) and cases that record their multiply-adds (extra_info "macs"), a
further table gives each variant's share of that peak, and the bound it puts on ours: computing
every multiply-add of the factored pair, the fused op cannot beat the pair by more than
1 / (the pair's share of the peak), nor realise more than 1 / (the dense conv's share). Winograd
kernels (ours on some 3x3 layers, oneDNN's on some) do fewer multiplications: their shares can
pass 100%, and the bounds do not hold for them.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict


def load_groups(path, name_filter=None):
    with open(path) as handle:
        data = json.load(handle)
    groups = defaultdict(dict)
    extras = defaultdict(dict)
    for bench in data["benchmarks"]:
        if name_filter and name_filter not in bench["fullname"]:
            continue
        variant = bench.get("extra_info", {}).get("variant", bench["name"])
        group = bench.get("group") or bench["name"]
        groups[group][variant] = bench["stats"]["median"] * 1e3
        if variant == "ours":
            extras[group] = bench.get("extra_info", {})
    return data.get("machine_info", {}), groups, extras


def alternating_groups(extras):
    """{group: {variant: its median when all variants were timed in alternation}}."""
    return {group: dict(extra["alternating_ms"]) for group, extra in extras.items()
            if "ours" in extra.get("alternating_ms", {})}


def table(groups, extras):
    variants = sorted({v for g in groups.values() for v in g}, key=lambda v: (v != "ours", v))
    baselines = [v for v in variants if v != "ours"]
    show_realisation = any("flop_ratio" in e for e in extras.values()) and "dense" in variants
    header = ["case"] + [f"{v} ms" for v in variants] + [f"{b}/ours" for b in baselines]
    header += ["realisation"] if show_realisation else []
    rows, ratio_columns = [], defaultdict(list)
    for group in sorted(groups):
        medians = groups[group]
        row = [group] + [f"{medians[v]:.3f}" if v in medians else "" for v in variants]
        for baseline in baselines:
            if baseline in medians and "ours" in medians:
                ratio = medians[baseline] / medians["ours"]
                ratio_columns[baseline].append(ratio)
                row.append(f"{ratio:.2f}x")
            else:
                row.append("")
        if show_realisation:
            flop_ratio = extras.get(group, {}).get("flop_ratio")
            if flop_ratio and "dense" in medians and "ours" in medians:
                realisation = medians["dense"] / medians["ours"] / flop_ratio
                ratio_columns["realisation"].append(realisation)
                row.append(f"{realisation:.2f}")
            else:
                row.append("")
        rows.append(row)
    summary = ["**median**"] + [""] * len(variants)
    summary += [f"{statistics.median(ratio_columns[b]):.2f}x" if ratio_columns[b] else "" for b in baselines]
    if show_realisation:
        summary.append(f"{statistics.median(ratio_columns['realisation']):.2f}" if ratio_columns["realisation"] else "")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows + [summary]]
    return "\n".join(lines)


def peak_table(groups, extras, peak_gflops):
    """Each variant's share of the peak, and the bounds on ours: pair/ours at most 1 / the pair's
    share, realisation at most 1 / the dense conv's share (see the module docstring)."""
    header = ["case", "ours % of peak", "pair % of peak", "dense % of peak", "pair/ours", "pair/ours bound",
              "realisation bound"]
    rows, columns = [], defaultdict(list)
    for group in sorted(groups):
        medians, macs = groups[group], extras.get(group, {}).get("macs")
        if not macs or not all(v in medians for v in ("ours", "pair", "dense")):
            continue
        share = {v: 2 * macs["dense" if v == "dense" else "factored"] / (medians[v] * 1e-3) / (peak_gflops * 1e9)
                 for v in ("ours", "pair", "dense")}
        values = {**share, "ratio": medians["pair"] / medians["ours"], "bound": 1 / share["pair"],
                  "realisation": 1 / share["dense"]}
        for key, value in values.items():
            columns[key].append(value)
        rows.append([group] + [f"{100 * values[v]:.0f}%" for v in ("ours", "pair", "dense")] +
                    [f"{values['ratio']:.2f}x", f"{values['bound']:.2f}x", f"{values['realisation']:.2f}"])
    if not rows:
        return "(no case records its multiply-adds)"
    median = {key: statistics.median(values) for key, values in columns.items()}
    rows.append(["**median**"] + [f"{100 * median[v]:.0f}%" for v in ("ours", "pair", "dense")] +
                [f"{median['ratio']:.2f}x", f"{median['bound']:.2f}x", f"{median['realisation']:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    parser.add_argument("--filter", default=None, help="keep benchmarks whose full name contains this")
    parser.add_argument("--fma-peak", type=float, default=None, metavar="GFLOPS",
                        help="the machine's multiply-add peak in GFLOP/s (all cores used): adds the peak table")
    args = parser.parse_args(argv)
    machine, groups, extras = load_groups(args.json_path, args.filter)
    if not groups:
        sys.exit(f"no benchmarks in {args.json_path}" + (f" matching {args.filter!r}" if args.filter else ""))
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    code = ""
    if "trp_ext_cpu_kernels" in machine:  # recorded by bench/conftest.py
        code = f", trp-ext {machine['trp_ext_cpu_kernels']} kernels, ATen {machine.get('aten_cpu_capability', '?')}"
    print(f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} cores{code}; medians in ms\n")
    print(table(groups, extras))
    alternating = alternating_groups(extras)
    if alternating:
        print("\nAlternating calls (every variant timed in turn, one call each, in the same time window):\n")
        print(table(alternating, extras))
    if args.fma_peak is not None:
        print(f"\nShare of the {args.fma_peak:g} GFLOP/s multiply-add peak, and the bounds it puts on ours "
              f"({'alternating' if alternating else 'back-to-back'} medians):\n")
        print(peak_table(alternating or groups, extras, args.fma_peak))


if __name__ == "__main__":
    main()
