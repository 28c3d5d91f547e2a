"""The ``trp-ext`` command: train, compress, eval, bench, demo."""
import argparse
import math
import os
import subprocess
import sys
from dataclasses import asdict, fields, replace

import torch

DEMO_SETTINGS = dict(arch="resnet20", data="digits", scheme="channel", energy=0.95, period=5, nuclear=3e-4,
                     epochs=30, lr=0.1, batch_size=64, latency_batch=64)


class UsageError(ValueError):
    """An option that cannot be honoured, found after parsing (it needs a file's contents);
    main prints it as argparse prints its own errors."""

    def __init__(self, option, message):
        super().__init__(f"argument {option}: {message}")


def _device_problem(text):
    """Why ``text`` is not a device this command can run on, or None."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f"invalid device {text!r}: use cpu, cuda or cuda:N"
    if device.type not in ("cpu", "cuda"):
        return f"device {text!r} is not supported: trp-ext runs on cpu or cuda"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            return f"{text!r} needs CUDA, which is not available here ({why})"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"{text!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def _device(text):
    """argparse type of --device."""
    problem = _device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _value_threshold(text):
    """argparse type of --value-threshold: a non-negative number, or none (the energy rule)."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: {text!r} (a number >= 0, or none)") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (or none), got {text}")
    return value


def _existing_ancestor(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _output_dir(text):
    """argparse type of a run directory: a folder, or one that can be made (no file in the way)."""
    blocker = _existing_ancestor(text)
    if not os.path.isdir(blocker):
        raise argparse.ArgumentTypeError(f"{blocker} is a file, not a directory")
    return text


def _output_file(text):
    """argparse type of a file to write: not a folder, and no file in the way of its folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    blocker = _existing_ancestor(os.path.dirname(os.path.abspath(text)))
    if not os.path.isdir(blocker):
        raise argparse.ArgumentTypeError(f"{blocker} is a file, not a directory")
    return text


def _add_training_args(parser, defaults):
    # No defaults here (the parser suppresses them): what is not given comes from TrainConfig, or,
    # with --resume, from the checkpoint's own settings, so an option's absence must be visible.
    add = parser.add_argument
    add("--arch", help="network (resnet20/32/44/56/110, resnet18/50)")
    add("--data", choices=["digits", "cifar10", "folder"],
        help="dataset; digits is built in (scikit-learn), no download")
    add("--data-dir", help="cifar-10-batches-py folder (or its parent), or image folder")
    add("--scheme", choices=["channel", "spatial", "none"],
        help="TRP decomposition scheme; none trains a plain baseline")
    add("--energy", type=float, help="TRP energy threshold e, in (0, 1]")
    add("--period", type=int, help="project every PERIOD steps (the paper's m)")
    add("--nuclear", type=float, help="nuclear-norm weight lambda (0: off)")
    add("--subgradient", choices=["truncated", "full"])
    add("--epochs", type=int, help="epochs in all (with --resume: more than saved extends the run; "
                                   "the lr milestones are fractions of it)")
    add("--lr", type=float)
    add("--batch-size", type=int)
    add("--device", type=_device, help=f"cpu, cuda, cuda:1, ... (default {defaults.device})")
    add("--out", type=_output_dir,
        help=f"run directory (default {defaults.out}; with --resume, the checkpoint's folder)")
    add("--resume", default=None,
        help="continue the run of this checkpoint (e.g. RUN/checkpoint.pt) with its saved settings; "
             "--epochs, --out, --device, --data-dir, --value-threshold, --data-on-device, --channels-last and "
             "--dist-timeout may change; options that would change its training are refused")
    add("--seed", type=int)
    add("--data-on-device", action="store_true", help="keep the dataset and its augmentation on --device")
    add("--channels-last", action="store_true", help="train in channels_last memory format")
    add("--value-threshold", type=_value_threshold,
        help=f"rank rule of the final decomposition: drop singular values below this (default "
             f"{defaults.value_threshold}, as the published TRP code); none: the energy rule instead (which "
             "cuts an already low-rank net again)")
    add("--quiet", action="store_true", help="no progress bars")
    add("--nproc", type=int, default=None,
        help="start N worker processes on this node (torchrun --standalone); the global --batch-size is split")
    add("--dist-timeout", type=int,
        help=f"seconds a collective may wait for a missing process before the job stops with an error "
             f"(default {defaults.dist_timeout})")


def _option(setting):
    return "--" + setting.replace("_", "-")


def _train_config(args):
    """The run's TrainConfig: the given options over TrainConfig's defaults, or, with --resume, over
    the checkpoint's saved settings (refusing those that would change its training)."""
    from trp_ext.train import TrainConfig, read_checkpoint, resume_conflict

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume is None:
        return TrainConfig(**given)
    state = read_checkpoint(args.resume)
    # The run directory is the checkpoint's folder: the saved path may be relative to another directory.
    config = replace(TrainConfig.from_dict(state["config"]), **{"out": os.path.dirname(args.resume) or ".", **given})
    conflict = resume_conflict(config, state, args.resume)
    if conflict is not None:
        raise UsageError(_option(conflict[0]), conflict[1])
    problem = _device_problem(config.device)
    if problem is not None:  # only the saved device can be unchecked: --device was checked when parsed
        raise UsageError("--device", f"{args.resume} was trained on {config.device!r}: {problem}; pass "
                                     "--device cpu (or another device) to continue here")
    return config


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
    config = _train_config(args)
    report = train(config, resume=args.resume, quiet=getattr(args, "quiet", False))
    if report is not None:
        print(format_table(report.summary))
        print(f"run directory: {os.path.abspath(config.out)}")


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


def _rank_rule(args, state, config):
    """decompose's rank rule: --energy E alone, or --value-threshold T alone (none: the checkpoint's
    energy), or else the checkpoint's own rule. A given option must win over the saved value
    threshold, which rank_rule prefers for a TRP-trained net; and whether the net was trained with TRP
    is the checkpoint's scheme, not the --scheme a baseline needs here."""
    from trp_ext.report import rank_rule

    if args.energy is not None:
        return {"energy": args.energy, "value_threshold": None}
    if hasattr(args, "value_threshold"):
        if args.value_threshold is None:
            return {"energy": config.energy, "value_threshold": None}
        return {"energy": None, "value_threshold": args.value_threshold}
    return rank_rule(config, trained_with_trp=state["config"].get("scheme", "channel") != "none")


def _model_from_checkpoint(state, config, dataset, option="--data-dir"):
    """The checkpoint's network, built for ``dataset``'s image channels and classes; a dataset of
    other shapes than the run's is a usage error of ``option``, not a size-mismatch traceback."""
    from trp_ext.models import build_model

    model = build_model(config.arch, num_classes=len(dataset.classes), in_channels=dataset.in_channels)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UsageError(option, f"the checkpoint's {config.arch} was not trained on {dataset.name} as given "
                                 f"({dataset.in_channels}-channel images in {len(dataset.classes)} classes): pass "
                                 "the data it was trained on") from None
    return model.to(config.device)


def cmd_compress(args):
    from trp_ext import io
    from trp_ext.data import TensorLoader, load_dataset
    from trp_ext.metrics import accuracy
    from trp_ext.report import compress_and_report, format_table
    from trp_ext.train import data_record

    state, config = _checkpoint_config(args.checkpoint, dict(scheme=args.scheme, device=args.device,
                                                             data_dir=args.data_dir))
    if config.scheme == "none":
        raise SystemExit("trp-ext compress: the checkpoint is a baseline; pass --scheme channel or spatial")
    dataset = load_dataset(config.data, config.data_dir)
    model = _model_from_checkpoint(state, config, dataset)
    loader = TensorLoader(dataset, "test", 256)
    report = compress_and_report(model, config, lambda m: accuracy(m, loader, config.device), dataset,
                                 torch.device(config.device), rule=_rank_rule(args, state, config))
    io.save_compressed(report.compressed, args.out, data=data_record(config))
    if args.report:
        io.atomic_write_json(args.report, report.summary)
    print(format_table(report.summary))
    print(f"compressed model: {os.path.abspath(args.out)}")


def _eval_data(args, recorded):
    """eval's (dataset, folder): --data and --data-dir over the ones the model file records. The
    recorded folder goes only with the recorded dataset: another dataset's folder would not fit."""
    name = args.data or recorded["name"]
    if args.data_dir is not None:
        return name, args.data_dir
    return name, recorded["dir"] if name == recorded["name"] else None


def cmd_eval(args):
    from trp_ext import io
    from trp_ext.data import TensorLoader, load_dataset
    from trp_ext.metrics import accuracy, count_cost

    payload = io.safe_torch_load(args.model, "model")  # read once: it may be large
    if isinstance(payload, dict) and payload.get("format") == io.COMPRESSED_FORMAT:
        model = io.model_from_compressed(payload, args.model)
        # Files written before the data was recorded, or by save_compressed without it: digits.
        recorded = payload.get("data") or {"name": "digits", "dir": None}
    else:
        state, config = _checkpoint_config(args.model, {}, payload)
        recorded = {"name": config.data, "dir": config.data_dir}
        model = None
    dataset = load_dataset(*_eval_data(args, recorded))
    arch = payload.get("arch") if model is not None else None
    if arch and (arch.get("in_channels"), arch.get("num_classes")) != (dataset.in_channels, len(dataset.classes)):
        # A file without a data record (older ones, or save_compressed without data) defaults to
        # digits, which cannot feed a CIFAR-shaped net: it would fail deep inside the first conv.
        raise UsageError("--data", f"{args.model} takes {arch.get('in_channels')}-channel images in "
                                   f"{arch.get('num_classes')} classes, but {dataset.name} has {dataset.in_channels}-"
                                   f"channel images in {len(dataset.classes)}: pass the --data (and --data-dir) "
                                   "it was trained on")
    if model is None:
        model = _model_from_checkpoint(state, replace(config, device="cpu"), dataset, "--data")
    model = model.to(args.device)
    acc = accuracy(model, TensorLoader(dataset, "test", 256), args.device)
    cost = count_cost(model, torch.zeros(1, dataset.in_channels, *dataset.image_size, device=args.device))
    print(f"accuracy {acc:.2f}% on {dataset.name} test ({len(dataset.test.labels)} images); "
          f"conv MFLOPs {2 * cost.conv_macs / 1e6:.2f}; params {cost.params / 1e6:.3f}M")


def cmd_bench(args):
    from trp_ext.data import load_dataset
    from trp_ext.decompose import decompose
    from trp_ext.metrics import compare_latency, count_cost, theoretical_speedup

    state, config = _checkpoint_config(args.checkpoint, dict(scheme=args.scheme, device=args.device,
                                                             data_dir=args.data_dir))
    if config.scheme == "none":
        raise SystemExit("trp-ext bench: the checkpoint is a baseline; pass --scheme channel or spatial")
    dataset = load_dataset(config.data, config.data_dir)
    dense = _model_from_checkpoint(state, config, dataset).eval()
    compressed, _ = decompose(dense, config.scheme, **_rank_rule(args, state, config), fold_bn=True)
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

    train = commands.add_parser("train", help="train a network with TRP (or a baseline) and compress it",
                                argument_default=argparse.SUPPRESS)
    _add_training_args(train, TrainConfig())
    train.set_defaults(func=cmd_train)

    compress = commands.add_parser("compress", help="decompose a training checkpoint and report",
                                   description="Rank rule: the checkpoint's (its value threshold after TRP "
                                   "training, else its energy), unless --energy or --value-threshold gives another.")
    compress.add_argument("--checkpoint", required=True)
    compress.add_argument("--scheme", choices=["channel", "spatial"], default=None)
    rule = compress.add_mutually_exclusive_group()
    rule.add_argument("--energy", type=float, default=None, metavar="E",
                      help="decompose by the energy rule at E, in (0, 1]")
    rule.add_argument("--value-threshold", type=_value_threshold, default=argparse.SUPPRESS, metavar="T",
                      help="decompose keeping singular values >= T (none: the checkpoint's energy)")
    compress.add_argument("--data-dir", default=None)
    compress.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    compress.add_argument("--out", type=_output_file, required=True, help="file for the compressed model")
    compress.add_argument("--report", type=_output_file, default=None, help="also write the report as JSON here")
    compress.set_defaults(func=cmd_compress)

    evaluate = commands.add_parser("eval", help="accuracy of a compressed model or a checkpoint")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", choices=["digits", "cifar10", "folder"], default=None)
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    evaluate.set_defaults(func=cmd_eval)

    bench = commands.add_parser("bench", help="latency of the original vs the compressed model",
                                description="Rank rule: the checkpoint's (its value threshold after TRP "
                                "training, else its energy), unless --energy gives another.")
    bench.add_argument("--checkpoint", required=True)
    bench.add_argument("--scheme", choices=["channel", "spatial"], default=None)
    bench.add_argument("--energy", type=float, default=None, metavar="E",
                       help="decompose by the energy rule at E, in (0, 1], not the checkpoint's rule")
    bench.add_argument("--data-dir", default=None)
    bench.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    bench.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 64])
    bench.add_argument("--repeats", type=_positive_int, default=20)
    bench.set_defaults(func=cmd_bench)

    demo = commands.add_parser("demo", help="train + compress + report on the built-in digits (about 20 s on 2 quiet cores)")
    demo.add_argument("--out", type=_output_dir, default="runs/demo")
    demo.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda, cuda:1, ...")
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
    except OSError as error:  # the machine's, not the arguments': a full disk, a read-only folder
        print(f"trp-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    except DistributedJobError as error:
        print(f"trp-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
