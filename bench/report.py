"""Turns pytest-benchmark JSON into the ratio tables of bench/RESULTS.md.

    python bench/report.py bench/latest.json [--baseline loop] [--filter NAME]

One row per group (a case); a column per variant with its median in ms; then, for each baseline
variant, the ratio baseline / ours (above 1 means ours is faster); realisation where the group has
a flop_ratio and a dense variant; and the median of each ratio column over all rows.

Where ours' test also timed every variant in alternation, call by call (extra_info
"alternating_ms", see bench/conftest.py), a second table gives the same columns from those
medians: all of one time window, each call after another variant's.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    parser.add_argument("--filter", default=None, help="keep benchmarks whose full name contains this")
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


if __name__ == "__main__":
    main()
