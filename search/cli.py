"""The ``hpsearch`` command (also ``python -m search``, which ``ray job submit`` runs).

Exit codes: 0 success, 1 the work failed (no trial reported a result, a checkpoint would
not load), 2 bad input (config, storage, arguments), caught before Ray starts, 3 a search
that finished with some trials in ERROR, 130 / 143 a search stopped by SIGINT / SIGTERM
(its state saved: ``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from search.config import ConfigError, config_to_dict, load_config, smoke_config
from trainables.errors import HpsearchError, InputError


# The offline default: the repository's configs/local.yaml (an editable install runs
# from the checkout).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"


class UsageError(InputError):
    """A bad argument or a state that refuses the command (exit code 2)."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) a search and write its tables (search.experiment)."""
    from search import experiment

    # Validate everything before importing Ray or TensorFlow (seconds of start-up).
    config = load_config(args.config or DEFAULT_CONFIG)
    if args.smoke_test:
        config = smoke_config(config)
    return experiment.run(config, resume=args.resume, resume_command=_resume_command(args))


def _resume_command(args: argparse.Namespace) -> str:
    import shlex

    words = ["hpsearch", "run"]
    if args.config:
        words += ["--config", args.config]
    if args.smoke_test:
        words.append("--smoke-test")
    return shlex.join([*words, "--resume"])


def _memory_stamp() -> str:
    from trainables.memory import table

    return f"{table()['measured']} on {table()['machine']}"


def cmd_plan(args: argparse.Namespace) -> int:
    """Print how each backbone's trials will run, and exit 2 if one cannot fit."""
    from search.plan import make_plan, table_markdown

    config = load_config(args.config or DEFAULT_CONFIG)
    plans = make_plan(config)
    print(table_markdown(plans), end="")
    print(f"global batch {config.recipe.batch_size}; memory from trainables/memory_table.json "
          f"(measured {_memory_stamp()}); a step uses at most 90% of a device")
    from search.experiment import check_plan

    check_plan(config)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Load a checkpoint in this process and measure it on its validation split."""
    from trainables.evaluate import evaluate_checkpoint

    path = Path(args.checkpoint)
    if not (path / "model.keras").is_file():
        raise UsageError(f"{path} is not a checkpoint directory (no model.keras)")
    accuracy = evaluate_checkpoint(path)
    print(json.dumps({"checkpoint": str(path), "val_accuracy": accuracy}))
    return 0


def _experiment(uri: str):
    """Split an experiment URI (local path or gs://) into its storage and name."""
    from trainables.storage import resolve

    uri = uri.rstrip("/")
    parent, _, name = uri.rpartition("/")
    if not name:
        raise UsageError(f"not an experiment directory: {uri!r}")
    location = resolve(parent or ".")
    if not location.exists(location.join(name)):
        raise UsageError(f"no experiment at {uri}: pass the directory `hpsearch run` wrote "
                         "(storage.path/search.name)")
    return location, name


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Build the TTA ensemble of a finished search and print its table."""
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.greedy_rounds < 0:
        raise UsageError(f"--greedy-rounds must be >= 0, got {args.greedy_rounds}")
    from search.ensemble import build, summary, table_markdown

    location, name = _experiment(args.experiment)
    result = build(location, name, top_k=args.top_k, tta=args.tta, greedy_rounds=args.greedy_rounds)
    print(table_markdown(result.rows), end="")
    print(summary(result))
    print(f"saved: {result.directory}/ensemble.keras (+ manifest.json, ensemble_table.csv)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report and plots of a finished search."""
    from search.report import make_report

    location, name = _experiment(args.experiment)
    written = make_report(location, name)
    print(f"report: {written['index.html']}")
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    """Validate a config and print it with every default filled in; with ``--schema``,
    print the JSON Schema of a config file instead."""
    if args.schema:
        from search.schema import schema_text

        print(schema_text(), end="")
        return 0
    import yaml

    print(yaml.safe_dump(config_to_dict(load_config(args.config or DEFAULT_CONFIG)), sort_keys=False), end="")
    return 0


def cmd_data_stage(args: argparse.Namespace) -> int:
    """Write a data set as Parquet shards that every worker reads from storage."""
    from search.stage import stage
    from trainables.data import NAMED_SOURCES
    from trainables.storage import is_supported, supported_schemes

    if args.dataset not in NAMED_SOURCES and not Path(args.dataset).is_dir():
        raise UsageError(f"--dataset must be one of {', '.join(NAMED_SOURCES)} or a CIFAR batch directory, "
                         f"got {args.dataset!r}")
    if not is_supported(args.to):
        raise UsageError(f"--to must be {supported_schemes()}, got {args.to!r}")
    manifest = stage(args.dataset, args.to, validation_fraction=args.validation_fraction, seed=args.seed,
                     shard_size=args.shard_size, overwrite=args.overwrite, progress=print)
    print(json.dumps({"staged": args.to, "examples": manifest.examples,
                      "shards": {k: len(v) for k, v in manifest.shards.items()}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from search.ensemble import DEFAULT_GREEDY_ROUNDS  # numpy and pyarrow: no TensorFlow, no Ray

    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for fine-tuning image classifiers on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a search")
    run.add_argument("--config", help="YAML config (default: the offline configs/local.yaml)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted search")
    run.add_argument("--smoke-test", action="store_true", help="2 tiny trials through every code path")
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("evaluate", help="validation accuracy of a checkpoint, in a fresh process")
    evaluate.add_argument("checkpoint", help="a checkpoint directory (holds model.keras)")
    evaluate.set_defaults(func=cmd_evaluate)

    ensemble = sub.add_parser("ensemble", help="TTA ensemble of a finished search's best checkpoints")
    ensemble.add_argument("experiment", help="experiment directory (local path or gs://...)")
    ensemble.add_argument("--top-k", type=int, default=None,
                          help="the library selection chooses from: the top-k trials by validation accuracy "
                               "(default: every trial with a usable checkpoint)")
    ensemble.add_argument("--tta", type=int, default=4,
                          help="test-time views per image to consider; 1 means no TTA (default 4); whether to use "
                               "them is chosen on validation")
    ensemble.add_argument("--greedy-rounds", type=int, default=DEFAULT_GREEDY_ROUNDS,
                          help="the most members greedy selection adds to the best one; it stops earlier when "
                               f"validation stops improving (default {DEFAULT_GREEDY_ROUNDS}; 0: the best member alone)")
    ensemble.set_defaults(func=cmd_ensemble)

    report = sub.add_parser("report", help="HTML report and plots of a finished search")
    report.add_argument("experiment", help="experiment directory (local path or gs://...)")
    report.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="each backbone's shape, micro-batches and memory per replica; exit 2 if one cannot fit")
    plan.add_argument("--config", help="YAML config (default: configs/local.yaml)")
    plan.set_defaults(func=cmd_plan)

    show = sub.add_parser("config", help="validate a config and print it with defaults filled in")
    show.add_argument("--config", help="YAML config (default: configs/local.yaml)")
    show.add_argument("--schema", action="store_true",
                      help="print the JSON Schema of a config file (configs/hpsearch.schema.json), for editors")
    show.set_defaults(func=cmd_show_config)

    from search.stage import DEFAULT_SHARD_SIZE

    data = sub.add_parser("data", help="prepare data sets for cluster-scale searches")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stage = data_sub.add_parser(
        "stage", help="write a data set as Parquet shards (train/val/test) to a local path or gs://",
        description="Reads the data set through hpsearch's loader and writes train, validation and test "
                    "as Parquet shards with a manifest. Point data.dataset at the same URI to search on it.")
    stage.add_argument("--dataset", default="cifar10",
                       help="cifar10 (Keras's downloader), digits, or a directory in the CIFAR python-batch layout")
    stage.add_argument("--to", required=True, help="destination: a local directory or gs://bucket/path")
    stage.add_argument("--validation-fraction", type=float, default=0.1,
                       help="share of the training split held out for validation (default 0.1)")
    stage.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    stage.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                       help=f"images per Parquet shard (default {DEFAULT_SHARD_SIZE}; a trial's workers need one "
                            "train shard each)")
    stage.add_argument("--overwrite", action="store_true", help="replace a data set already staged there")
    stage.set_defaults(func=cmd_data_stage)

    from cluster.cli import add_parser as add_cluster_parser

    add_cluster_parser(sub, validate_config=load_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CUDA probes on CPU machines) drowns the progress
    # display; Ray workers inherit this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except HpsearchError as exc:  # every expected failure; its class carries the exit code
        kind = "config error: " if isinstance(exc, ConfigError) else ""
        print(f"hpsearch: {kind}{exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
