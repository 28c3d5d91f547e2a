"""The ``trp-ext`` command: train, compress, eval, bench, demo."""
import argparse
import os
import subprocess
import sys
from dataclasses import asdict, replace

import torch

DEMO_SETTINGS = dict(arch="resnet20", data="digits", scheme="channel", energy=0.95, period=5, nuclear=3e-4,
                     epochs=30, lr=0.1, batch_size=64, latency_batch=64)


def _add_training_args(parser, defaults):
    add = parser.add_argument
    add("--arch", default=defaults.arch, help="network (resnet20/32/44/56/110, resnet18/50)")
    add("--data", default=defaults.data, choices=["digits", "cifar10", "folder"],
        help="dataset; digits is built in (scikit-learn), no download")
    add("--data-dir", default=defaults.data_dir, help="cifar-10-batches-py folder (or its parent), or image folder")
    add("--scheme", default=defaults.scheme, choices=["channel", "spatial", "none"],
        help="TRP decomposition scheme; none trains a plain baseline")
    add("--energy", type=float, default=defaults.energy, help="TRP energy threshold e, in (0, 1]")
    add("--period", type=int, default=defaults.period, help="project every PERIOD steps (the paper's m)")
    add("--nuclear", type=float, default=defaults.nuclear, help="nuclear-norm weight lambda (0: off)")
    add("--subgradient", default=defaults.subgradient, choices=["truncated", "full"])
    add("--epochs", type=int, default=defaults.epochs)
    add("--lr", type=float, default=defaults.lr)
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--device", default=defaults.device, help="cpu, cuda, cuda:1, ...")
    add("--out", default=defaults.out, help="run directory")
    add("--resume", default=None, help="checkpoint to resume from (e.g. RUN/checkpoint.pt)")
    add("--seed", type=int, default=defaults.seed)
    add("--data-on-device", action="store_true", help="keep the dataset and its augmentation on --device")
    add("--channels-last", action="store_true", help="train in channels_last memory format")
    add("--value-threshold", type=float, default=None, help="extra rank cap when compressing at the end")
    add("--quiet", action="store_true", help="no progress bars")
    add("--nproc", type=int, default=None,
        help="start N worker processes on this node (torchrun --standalone); the global --batch-size is split")
    add("--dist-timeout", type=int, default=defaults.dist_timeout,
        help="seconds a collective may wait for a missing process before the job stops with an error")


def _config_from_args(args):
    from trp_ext.train import TrainConfig

    return TrainConfig(arch=args.arch, data=args.data, data_dir=args.data_dir, scheme=args.scheme,
                       energy=args.energy, period=args.period, nuclear=args.nuclear, subgradient=args.subgradient,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
                       out=args.out, seed=args.seed, data_on_device=args.data_on_device,
                       channels_last=args.channels_last, value_threshold=args.value_threshold,
                       latency_batch=getattr(args, "latency_batch", 64),
                       dist_timeout=getattr(args, "dist_timeout", 300))


def launch_workers(nproc, argv):
    """Re-runs this command as `nproc` torchrun workers on this node; returns their exit code."""
    if nproc < 1:
        raise ValueError(f"argument 'nproc' must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "trp_ext", *argv]
    return subprocess.call(command)


def _without_nproc(argv):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def cmd_train(args):
    from trp_ext.report import format_table
    from trp_ext.train import train

    if getattr(args, "nproc", None) is not None and "WORLD_SIZE" not in os.environ:
        code = launch_workers(args.nproc, _without_nproc(args.argv))
        if code:
            from trp_ext.train import DistributedJobError

            raise DistributedJobError(f"a training worker failed (exit code {code}); see the messages above")
        return
    report = train(_config_from_args(args), resume=args.resume, quiet=args.quiet)
    if report is not None:
        print(format_table(report.summary))
        print(f"run directory: {os.path.abspath(args.out)}")


def cmd_demo(args):
    from trp_ext.train import TrainConfig

    settings = dict(DEMO_SETTINGS, out=args.out, device=args.device)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    print("trp-ext demo: ResNet-20 with TRP (channel scheme) on scikit-learn's digits, then decomposition")
    args_like = argparse.Namespace(**{**asdict(TrainConfig(**settings)), "resume": None, "quiet": args.quiet,
                                      "nproc": None})
    cmd_train(args_like)


def _checkpoint_config(path, overrides, payload=None):
    """(checkpoint, its config with the non-None overrides); ``payload``: the file, if already read."""
    from trp_ext.train import TrainConfig, checked_checkpoint, read_checkpoint

    state = read_checkpoint(path) if payload is None else checked_checkpoint(payload, path)
    config = TrainConfig.from_dict(state["config"])
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return state, config


def _model_from_checkpoint(state, config, dataset):
    from trp_ext.models import build_model

    model = build_model(config.arch, num_classes=len(dataset.classes), in_channels=dataset.in_channels)
    model.load_state_dict(state["model"])
    return model.to(config.device)


def cmd_compress(args):
    from trp_ext import io
    from trp_ext.data import TensorLoader, load_dataset
    from trp_ext.metrics import accuracy
    from trp_ext.report import compress_and_report, format_table

    state, config = _checkpoint_config(args.checkpoint, dict(scheme=args.scheme, energy=args.energy,
                                                             value_threshold=args.value_threshold,
                                                             device=args.device, data_dir=args.data_dir))
    if config.scheme == "none":
        raise SystemExit("trp-ext compress: the checkpoint is a baseline; pass --scheme channel or spatial")
    dataset = load_dataset(config.data, config.data_dir)
    model = _model_from_checkpoint(state, config, dataset)
    loader = TensorLoader(dataset, "test", 256)
    report = compress_and_report(model, config, lambda m: accuracy(m, loader, config.device), dataset,
                                 torch.device(config.device))
    io.save_compressed(report.compressed, args.out)
    if args.report:
        io.atomic_write_json(args.report, report.summary)
    print(format_table(report.summary))
    print(f"compressed model: {os.path.abspath(args.out)}")


def cmd_eval(args):
    from trp_ext import io
    from trp_ext.data import TensorLoader, load_dataset
    from trp_ext.metrics import accuracy, count_cost

    payload = io.safe_torch_load(args.model, "model")  # read once: it may be large
    if isinstance(payload, dict) and payload.get("format") == io.COMPRESSED_FORMAT:
        model = io.model_from_compressed(payload, args.model)
        data, data_dir = args.data or "digits", args.data_dir
    else:
        state, config = _checkpoint_config(args.model, dict(data_dir=args.data_dir), payload)
        data, data_dir = args.data or config.data, config.data_dir
        model = None
    dataset = load_dataset(data, data_dir)
    if model is None:
        model = _model_from_checkpoint(state, replace(config, device="cpu"), dataset)
    model = model.to(args.device)
    acc = accuracy(model, TensorLoader(dataset, "test", 256), args.device)
    cost = count_cost(model, torch.zeros(1, dataset.in_channels, *dataset.image_size, device=args.device))
    print(f"accuracy {acc:.2f}% on {dataset.name} test ({len(dataset.test.labels)} images); "
          f"conv MFLOPs {2 * cost.conv_macs / 1e6:.2f}; params {cost.params / 1e6:.3f}M")


def cmd_bench(args):
    from trp_ext.data import load_dataset
    from trp_ext.decompose import decompose
    from trp_ext.metrics import compare_latency, count_cost, theoretical_speedup
    from trp_ext.report import rank_rule

    state, config = _checkpoint_config(args.checkpoint, dict(scheme=args.scheme, energy=args.energy,
                                                             device=args.device, data_dir=args.data_dir))
    if config.scheme == "none":
        raise SystemExit("trp-ext bench: the checkpoint is a baseline; pass --scheme channel or spatial")
    dataset = load_dataset(config.data, config.data_dir)
    dense = _model_from_checkpoint(state, config, dataset).eval()
    compressed, _ = decompose(dense, config.scheme, **rank_rule(config), fold_bn=True)
    example = torch.zeros(1, dataset.in_channels, *dataset.image_size, device=config.device)
    print(f"FLOPs speedup {theoretical_speedup(count_cost(dense, example), count_cost(compressed, example)):.2f}x")
    print(f"{'batch':>6}  {'dense ms':>10}  {'compressed ms':>13}  {'speedup':>8}")
    for batch in args.batch_sizes:
        inputs = example.expand(batch, *example.shape[1:]).contiguous()
        dense_s, comp_s = compare_latency(dense, compressed, inputs, repeats=args.repeats)
        print(f"{batch:>6}  {dense_s * 1e3:>10.3f}  {comp_s * 1e3:>13.3f}  {dense_s / comp_s:>7.2f}x")


def build_parser():
    from trp_ext.train import TrainConfig

    parser = argparse.ArgumentParser(prog="trp-ext", description="Trained Rank Pruning for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network with TRP (or a baseline) and compress it")
    _add_training_args(train, TrainConfig())
    train.set_defaults(func=cmd_train)

    compress = commands.add_parser("compress", help="decompose a training checkpoint and report")
    compress.add_argument("--checkpoint", required=True)
    compress.add_argument("--scheme", choices=["channel", "spatial"], default=None)
    compress.add_argument("--energy", type=float, default=None)
    compress.add_argument("--value-threshold", type=float, default=None)
    compress.add_argument("--data-dir", default=None)
    compress.add_argument("--device", default=None)
    compress.add_argument("--out", required=True, help="file for the compressed model")
    compress.add_argument("--report", default=None, help="also write the report as JSON here")
    compress.set_defaults(func=cmd_compress)

    evaluate = commands.add_parser("eval", help="accuracy of a compressed model or a checkpoint")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", choices=["digits", "cifar10", "folder"], default=None)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=cmd_eval)

    bench = commands.add_parser("bench", help="latency of the original vs the compressed model")
    bench.add_argument("--checkpoint", required=True)
    bench.add_argument("--scheme", choices=["channel", "spatial"], default=None)
    bench.add_argument("--energy", type=float, default=None)
    bench.add_argument("--data-dir", default=None)
    bench.add_argument("--device", default=None)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    bench.add_argument("--repeats", type=int, default=20)
    bench.set_defaults(func=cmd_bench)

    demo = commands.add_parser("demo", help="train + compress + report on the built-in digits (about 2 min on 2 cores)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    from trp_ext.train import DistributedJobError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"trp-ext {args.command}: error: {error}", file=sys.stderr)
        return 2
    except DistributedJobError as error:
        print(f"trp-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
