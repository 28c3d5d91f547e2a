"""One table row per kernel launch from Nsight Compute's text report of bench/ncu_layers.py
(bench/gpu_check.sh):

    python bench/ncu_summary.py ncu.txt

Each layer's two calls launch one fused kernel each, in the order the script printed the layers,
so launches are matched to layers two at a time. A report without launches (ncu missing, no GPU,
or cut short) gives a line saying so.
"""
import re
import sys

METRICS = {  # column: the metric's name in the report
    "us": "Duration",
    "regs": "Registers Per Thread",
    "smem KB": "Dynamic Shared Memory Per Block",
    "cluster": "Cluster Size",
    "occ. theor. %": "Theoretical Occupancy",
    "occ. achieved %": "Achieved Occupancy",
    "SM busy %": "Compute (SM) Throughput",
    "memory busy %": "Memory Throughput",
}
# ncu scales some units to the value (a kernel past 1 ms reads "ms"): to the columns' units.
SCALE = {"Duration": {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6},
         "Dynamic Shared Memory Per Block": {"byte/block": 1 / 1024, "Kbyte/block": 1.0, "Mbyte/block": 1024.0}}
LAUNCH = re.compile(r"^\s+(?:void )?(factored_conv2d_kernel<[^>]*>)\(FconvArgs\) \(([\d, ]+)\)x")
LAYER = re.compile(r"^(channel|spatial) (.+): 2 calls$")


def parse(text):
    layers, launches = [], []
    for line in text.splitlines():
        layer = LAYER.match(line)
        if layer:
            layers.append(f"{layer.group(1)} {layer.group(2)}")
            continue
        launch = LAUNCH.match(line)
        if launch:
            launches.append({"kernel": launch.group(1), "grid": launch.group(2).replace(" ", "")})
            continue
        if launches:
            for column, name in METRICS.items():
                # "Memory Throughput" comes twice (%, then Gbyte/s): keep the first, the percent.
                match = re.match(rf"^\s+{re.escape(name)}\s+(\S+)?\s+([\d.,]+)$", line)
                if match and column not in launches[-1]:
                    value = match.group(2).replace(",", "")
                    factor = SCALE.get(name, {}).get(match.group(1))
                    if factor is not None:
                        value = f"{float(value) * factor:.2f}"
                    elif name in SCALE:  # a unit not met yet: shown, not guessed
                        value = f"{value} {match.group(1)}"
                    launches[-1][column] = value
    return layers, launches


def main(path):
    layers, launches = parse(open(path, errors="replace").read())
    if not launches:
        print("ncu_summary: no kernel launches in the report")
        return
    columns = ["layer", "kernel", "grid"] + list(METRICS)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for i, launch in enumerate(launches):
        launch["layer"] = layers[i // 2] if i // 2 < len(layers) else "?"
        print("| " + " | ".join(launch.get(column, "") for column in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
