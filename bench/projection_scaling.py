"""The projection-time model of trp_ext.distributed for ResNet-50, by world size and link.

    python bench/projection_scaling.py [--flops F] [--dtype-bytes 4]

Prints, for 1 to 8 processes, the predicted seconds of one TRP projection replicated on every
rank and sharded (compute split by cost + all-gather of the projected weights), and which one
the code picks ("auto"). F is the effective flop rate of lowrank_project on one device; take it
from a measured bench (seconds of one replicated projection / total cost below).
"""
import argparse

from trp_ext.distributed import LINKS, choose_mode, matrix_cost, predicted_seconds
from trp_ext.lowrank import conv_weight_to_matrix
from trp_ext.models import resnet50
from trp_ext.selection import select_layers

LINK_CHOICES = {"NVLink (150 GB/s, 20 us)": (150e9, 20e-6), "PCIe/IB (25 GB/s, 30 us)": (25e9, 30e-6),
                "10 GbE (1.25 GB/s, 50 us)": (1.25e9, 50e-6)}


def resnet50_shapes(scheme="channel"):
    return [tuple(conv_weight_to_matrix(m.weight, scheme).shape) for _, m in select_layers(resnet50())]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops", type=float, default=LINKS["cuda"]["flops"])
    parser.add_argument("--dtype-bytes", type=int, default=4)
    parser.add_argument("--scheme", default="channel")
    args = parser.parse_args()
    shapes = resnet50_shapes(args.scheme)
    total = sum(matrix_cost(s) for s in shapes)
    gathered = sum(m * n for m, n in shapes) * args.dtype_bytes
    print(f"ResNet-50 {args.scheme}: {len(shapes)} matrices, cost {total / 1e9:.2f} GFLOP, "
          f"{gathered / 1e6:.1f} MB gathered per projection, F = {args.flops / 1e9:.0f} GFLOP/s\n")
    print("| link | W | replicated ms | sharded ms | auto picks |")
    print("|---|---|---|---|---|")
    for name, (bandwidth, latency) in LINK_CHOICES.items():
        for world in (1, 2, 4, 8):
            rep, sh = predicted_seconds(shapes, args.dtype_bytes, world, "cuda", flops=args.flops,
                                        bandwidth=bandwidth, latency=latency)
            pick = choose_mode(shapes, args.dtype_bytes, world, "cuda", flops=args.flops, bandwidth=bandwidth,
                               latency=latency)
            print(f"| {name} | {world} | {rep * 1e3:.2f} | {sh * 1e3:.2f} | {pick} |")


if __name__ == "__main__":
    main()
