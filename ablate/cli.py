"""The ``ablate`` command: parses arguments and dispatches; the work lives in the modules it calls.

    ablate models                         the registry, with parameters and MACs
    ablate train --model resnet20 ...     one configuration, progress per epoch
    ablate plan studies/X.yaml            every trial a study would run, without training
    ablate run studies/X.yaml             run a study on Ray Tune, recorded in MLflow
    ablate studies                        the studies recorded in MLflow
    ablate report --study X               tables, plots and a diagnosis from the records
    ablate lesion --study X               test error of the trained nets with units deleted (Veit et al. 2016)
    ablate bench --model resnet20         training throughput against the conventional pipeline

User errors (a bad config, study file or data set: :class:`ablate.errors.UserError`) print one message
and exit with status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from ablate.config import Block, ConfigError, Shortcut
from ablate.errors import UserError
from ablate.console import text_table
from ablate.data.catalog import dataset_names

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as err:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"ablate {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ablate {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered networks with parameters and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--in-channels", type=_positive, help="input channels (3: CIFAR, 1: Fashion-MNIST); default: the net's")
    p.add_argument("--num-classes", type=_positive, help="default: the net's (10 CIFAR, 1000 ImageNet)")
    p.add_argument("--image-size", type=_positive, help="default: the net's (32 CIFAR, 224 ImageNet)")
    p.set_defaults(handler=_models)

    p = sub.add_parser("train", help="train one configuration and show progress per epoch")
    p.add_argument("--model", help="a registered name (see 'ablate models'); spec options below override it")
    p.add_argument("--block", choices=get_args(Block))
    p.add_argument("--n", type=int, help="units per stage: depth 6n+2 (basic) or 9n+2 (bottleneck)")
    p.add_argument("--shortcut", choices=get_args(Shortcut), help="none: the plain net; see ablate/config.py")
    p.add_argument(
        "--data", default="fashion-mnist", choices=dataset_names(),
        help="the data set (default fashion-mnist: on disk after scripts/install.sh, no download; study files and "
             "DataConfig default to cifar10, the paper's data set)",
    )
    p.add_argument("--data-root", help="directory holding the data set's files")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="run length in epochs")
    length.add_argument("--iterations", type=int, help="run length in iterations (paper: 64000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--checkpoint-dir", help="write checkpoint.pt here at every evaluation")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    _add_set(p)
    p.set_defaults(handler=_train)

    p = sub.add_parser("plan", help="list every trial of a study with its parameters, MACs and FLOPs")
    p.add_argument("study", help="study file, e.g. studies/depth_sweep.yaml")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_set(p)
    p.set_defaults(handler=_plan)

    p = sub.add_parser("run", help="run a study on Ray Tune; every trial is recorded in MLflow")
    p.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this study")
    p.add_argument("--address", help="existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db at the project root)")
    p.add_argument("--storage-path", help="where Ray Tune keeps trial state and checkpoints")
    p.add_argument("--yes", action="store_true", help="start even when the estimated wall time here exceeds a day")
    _add_set(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser("studies", help="list the studies recorded in MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db at the project root)")
    p.set_defaults(handler=_studies)

    p = sub.add_parser("report", help="tables, plots and a diagnosis of a recorded study")
    p.add_argument("--study", required=True, help="the study's name (see 'ablate studies')")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db at the project root)")
    p.add_argument("--out", default="reports", help="output folder; the report goes to OUT/STUDY/")
    p.add_argument("--json", action="store_true", help="print the answer and the findings as JSON for scripts")
    p.set_defaults(handler=_report)

    p = sub.add_parser("lesion", help="test error of a study's trained nets with residual units deleted")
    p.add_argument("--study", required=True, help="the study's name (see 'ablate studies')")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db at the project root)")
    p.add_argument("--k", type=_positive, help="delete up to K random units at once (default 10, at most the "
                                               "deletable units)")
    p.add_argument("--draws", type=_positive, help="random sets of units per k (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random draws, with each trial's seed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(handler=_lesion)

    p = sub.add_parser("bench", help="training throughput and memory against the conventional pipeline")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per pipeline")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on CPU)")
    p.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="with --compile; reduce-overhead: CUDA graphs")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: where it helps")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: where it helps")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--trials", type=int, default=1, help="also time this many trainer runs sharing the device")
    p.add_argument("--fuse", type=int, default=1, help="also time this many runs fused into one (ablate.fused)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_bench)
    return parser


def _positive(text: str) -> int:
    """argparse type: a whole number >= 1 (else argparse's usage error, exit status 2)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any key, e.g. --set trainer.epochs=2 (repeatable; VALUE is parsed as YAML, 1e3 a number)",
    )


def _parse_sets(pairs: Sequence[str], source: str) -> dict:
    """``--set`` pairs -> ``{key path: value}``, parsed as ``plan`` and ``run`` parse them (one parser)."""
    from ablate.study.files import parse_override

    return dict(parse_override(pair, source) for pair in pairs)


# -- handlers -------------------------------------------------------------------------------------


def _models(args) -> int:
    from ablate.models import count_macs, count_params, default_input, list_models, model_spec
    from ablate.models.registry import TABLE1_NOTE, table1_gflops

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; try 'ablate models'")
    rows, noted = [], False
    for name in names:
        spec = model_spec(name)
        native = default_input(spec)
        channels = args.in_channels or native.in_channels
        classes = args.num_classes or native.num_classes
        size = args.image_size or native.image_size
        params = count_params(spec, in_channels=channels, num_classes=classes)
        macs = count_macs(spec, in_channels=channels, num_classes=classes, image_size=size)
        paper = table1_gflops(spec) if (channels, size, classes) == native else None
        noted |= paper is not None
        units = ",".join(map(str, spec.n)) if isinstance(spec.n, tuple) else spec.n
        rows.append([name, spec.block, units, spec.depth, spec.shortcut, f"{channels}x{size}x{size}", classes,
                     f"{params:,}", f"{macs:,}", f"{paper}G" if paper else ""])
    headers = ["name", "block", "units/stage", "depth", "shortcut", "input", "classes", "params", "MACs/image",
               "Table 1 FLOPs"]
    print(text_table(headers, rows, right={3, 6, 7, 8, 9}))
    if noted:
        print("\n" + textwrap.fill(TABLE1_NOTE, width=110))
    return 0


def _train(args) -> int:
    from ablate.config import TrainConfig, with_overrides
    from ablate.models import model_spec
    from ablate.metrics import Status
    from ablate.trainer import CHECKPOINT_FILE, train

    flags = {"data.name": args.data, "seed": args.seed, "trainer.device": args.device}
    if args.model:
        flags |= {f"model.{k}": v for k, v in model_spec(args.model).model_dump().items()}
    for key in ("block", "n", "shortcut"):
        if getattr(args, key) is not None:
            flags[f"model.{key}"] = getattr(args, key)
    if args.data_root:
        flags["data.root"] = args.data_root
    if args.epochs:
        flags["trainer.epochs"] = args.epochs
    if args.iterations:
        flags["trainer.iterations"] = args.iterations
    config = with_overrides(TrainConfig(), flags | _parse_sets(args.overrides, "command line"), source="command line")
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir (the folder holding checkpoint.pt)")
    if args.resume and not (Path(args.checkpoint_dir) / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"--resume: no {CHECKPOINT_FILE} in {args.checkpoint_dir} to resume from")

    print(f"training {config.model.name} on {config.data.name}, seed {config.seed}", flush=True)
    result = train(
        config, _print_progress, checkpoint_dir=args.checkpoint_dir,
        resume_from=args.checkpoint_dir if args.resume else None,
    )
    print(f"status: {result.status}")
    return 0 if result.status == Status.FINISHED else 1


def _print_progress(m: dict) -> None:
    parts = [f"epoch {m['epoch']:6.2f}", f"it {m['iteration']:>6}", f"loss {m['train_loss']:.4f}",
             f"train {100 * m['train_error']:5.2f}%"]
    for key in ("val_error", "test_error"):
        if key in m:
            parts.append(f"{key.split('_')[0]} {100 * m[key]:5.2f}%")
    parts += [f"lr {m['lr']:.4g}", f"{m['images_per_s']:,.0f} img/s", f"{m['wall_time']:.1f}s"]
    print("  ".join(parts), flush=True)


def _plan(args) -> int:
    from ablate.study import format_plan, load_study, plan_rows

    study = load_study(args.study, args.overrides)
    rows = plan_rows(study)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from ablate.perf.estimate import estimate, format_estimate

    print(format_plan(rows))
    print(format_estimate(estimate(study, rows=rows)))
    return 0


def _run(args) -> int:
    from ablate.search import run_study
    from ablate.study import load_study

    study = load_study(args.study, args.overrides)
    return run_study(
        study, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri,
        storage_path=args.storage_path, confirm=lambda checked: _check_duration(checked, args),
    )


def _check_duration(study, args) -> None:
    """Print the estimated wall time here; above a day, refuse to start without --yes."""
    from ablate.perf.estimate import DAY, estimate, format_duration, format_estimate

    guess = estimate(study)
    print(format_estimate(guess), flush=True)
    if guess.seconds > DAY and not args.yes:
        raise ConfigError(
            f"{args.study}: estimated at {format_duration(guess.seconds)} of training on this machine; add --yes to "
            "start it anyway, shorten it (--set trainer.iterations=N, fewer seeds), or run it on a GPU or a Ray "
            "cluster (--address)"
        )


def _studies(args) -> int:
    from ablate.report import format_studies, list_studies

    print(format_studies(list_studies(args.tracking_uri)))
    return 0


def _report(args) -> int:
    from ablate.report import make_report

    result = make_report(args.study, tracking_uri=args.tracking_uri, out_dir=args.out)
    if args.json:
        print(json.dumps(result.data, indent=2))
        return 0
    print(result.summary)
    print(f"\nreport written to {result.path}")
    return 0


def _lesion(args) -> int:
    from ablate.lesion import DRAWS, MAX_K, lesion_study

    max_k, draws = args.k or MAX_K, args.draws or DRAWS
    print(f"lesion sweep of study {args.study}: k = 1..{max_k}, {draws} random draws each", flush=True)
    results = lesion_study(args.study, tracking_uri=args.tracking_uri, max_k=max_k, draws=draws,
                           seed=args.seed, device=args.device, out=lambda line: print(line, flush=True))
    print(f"lesion.json and lesion/* metrics logged on {len(results)} trial runs; "
          f"`ablate report --study {args.study}` shows them")
    return 0


def _bench(args) -> int:
    from ablate.perf.bench import format_bench, run_bench

    result = run_bench(
        model=args.model, device=args.device, batch_size=args.batch_size, steps=args.steps,
        warmup_steps=args.warmup_steps, compile=args.compile, compile_mode=args.compile_mode, bf16=args.bf16,
        channels_last=args.channels_last, workers=args.workers, trials=args.trials, fuse=args.fuse,
    )
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
