"""The `nluft` command: parse arguments, then call one function per verb.

Heavy libraries (torch, transformers, datasets) are imported inside the verbs so that
`nluft --help` stays fast. Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nluft.errors import NluftError

EXIT_STOPPED = 3  # training stopped on a signal after checkpointing; resume with --resume


def build_parser(extend: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; `extend` adds more (launch/ adds its verbs)."""
    parser = argparse.ArgumentParser(
        prog="nluft", description="Fine-tune pre-trained language models on NLU tasks."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for add in (add_train_verbs, add_inference_verbs, add_run_verbs, add_search_verb):
        add(verbs)
    if extend is not None:
        extend(verbs)
    return parser


def add_train_verbs(verbs: Any) -> None:
    """train and distill."""
    train = verbs.add_parser("train", help="fine-tune from a YAML config")
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. train.learning_rate=3e-5"
    )
    train.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and plan, then exit"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its latest checkpoint",
    )
    train.add_argument("--overwrite", action="store_true", help="delete output_dir first")

    distill = verbs.add_parser(
        "distill", help="train a smaller student on a finished run's soft targets"
    )
    distill.add_argument("config", help="YAML config of the student (see configs/)")
    distill.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="teacher=RUN_DIR (same as distill.teacher=RUN_DIR), e.g. distill.keep_every=3",
    )
    for flag, text in (
        ("--dry-run", "print the plan"),
        ("--resume", "resume"),
        ("--overwrite", "delete output_dir first"),
    ):
        distill.add_argument(flag, action="store_true", help=text)


def add_inference_verbs(verbs: Any) -> None:
    """eval and predict: they use a run's export."""
    evaluate = verbs.add_parser("eval", help="evaluate a run's exported model on a split")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. data.test_file=other.csv"
    )
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--json", action="store_true", help="print one JSON object of metrics")
    evaluate.add_argument(
        "--export",
        type=Path,
        help="the export to use (default RUN_DIR/export; e.g. RUN_DIR/export-adapter, export-int8)",
    )

    predict = verbs.add_parser("predict", help="predict labels with a run's exported model")
    predict.add_argument("run_dir", type=Path)
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="JSONL file with the config's text column(s)")
    source.add_argument("--text", help="one text to classify")
    predict.add_argument("--text-pair", help="second text, for sentence-pair tasks")
    predict.add_argument(
        "--export", type=Path, help="exported model to use (default RUN_DIR/export), e.g. int8"
    )


def add_export_verbs(verbs: Any) -> None:
    """export and bench-infer."""
    export = verbs.add_parser(
        "export", help="write a run's best/latest checkpoint (or a given one) as a HF folder"
    )
    export.add_argument("path", type=Path, help="RUN_DIR or RUN_DIR/checkpoints/step-N")
    export.add_argument(
        "--checkpoint",
        choices=["best", "latest"],
        default="best",
        help="which checkpoint of RUN_DIR (default: best, else latest)",
    )
    export.add_argument(
        "--out", type=Path, help="target folder (default: RUN_DIR/export, or export-step-N)"
    )
    export.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write a dynamically quantised CPU model to <export>-int8 (nluft/quantize.py)",
    )

    bench = verbs.add_parser(
        "bench-infer", help="accuracy, size, CPU latency and throughput of exports, in one table"
    )
    bench.add_argument(
        "paths", type=Path, nargs="+", metavar="RUN_DIR", help="run dirs (their export/)"
    )
    bench.add_argument(
        "--export",
        type=Path,
        action="append",
        default=[],
        help="more exports, e.g. RUN/export-int8",
    )
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    bench.add_argument(
        "--latency-examples", type=int, default=100, help="batch-1 examples per round"
    )
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--split", default="test", choices=["train", "validation", "test"])
    bench.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", type=Path, help="also write the measurements to this file")


def add_run_verbs(verbs: Any) -> None:
    """Verbs that read runs or check data: export, bench-infer, check-data, plan, report,
    sweep-summary."""
    add_export_verbs(verbs)
    check = verbs.add_parser(
        "check-data", help="report data problems before training (exit 1 on errors)"
    )
    check.add_argument("config", help="YAML config (see configs/)")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.max_length=256")

    plan = verbs.add_parser(
        "plan", help="per-rank memory of every strategy, with/without PEFT and checkpointing"
    )
    plan.add_argument("config", help="YAML config (see configs/)")
    plan.add_argument("overrides", nargs="*", metavar="key=value")
    plan.add_argument("--nproc", type=int, default=1, help="ranks (default 1)")
    plan.add_argument("--gpu-memory", type=float, help="GiB per device: print the cheapest fit")

    report = verbs.add_parser("report", help="print a run's metrics table and plot its curves")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/report.png)")

    sweep = verbs.add_parser(
        "sweep-summary", help="rank the runs of a sweep by a validation metric"
    )
    sweep.add_argument("sweep_dir", type=Path, help="folder holding one run dir per sweep point")
    sweep.add_argument("--metric", help="validation metric (default: the run's best-model metric)")


# A `key=value` override: a dotted config key, then `=` (a flag starts with `-`, a path rarely so).
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse the command line; `key=value` overrides may stand before or after the flags.

    argparse fills a `nargs="*"` positional only from the arguments before the first flag, so
    overrides after a flag come back unrecognised: they are appended, in order, to the verb's.
    """
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if OVERRIDE.match(item)]
    unknown = [item for item in extra if not OVERRIDE.match(item)]
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"nluft {args.verb} takes no key=value overrides (got {' '.join(overrides)})")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def add_search_verb(verbs: Any) -> None:
    search = verbs.add_parser(
        "search", help="hyperparameter search (grid, random, tpe) over the config's search space"
    )
    search.add_argument("config", help="YAML config with a search: section")
    search.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. search.n_trials=20")
    search.add_argument("--parallel", type=int, default=1, help="trials at once (worker processes)")
    search.add_argument(
        "--requeue", action="store_true", help="requeue this Slurm job after a stop (nluft submit)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_verb(VERBS[args.verb], args)


def run_verb(verb: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call one verb; bad input becomes one line on stderr and exit code 2."""
    try:
        return verb(args)
    except NluftError as err:
        print(f"nluft: error: {err}", file=sys.stderr)
        return NluftError.exit_code
    except KeyboardInterrupt:
        print("nluft: interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()


def run_train(args: argparse.Namespace) -> int:
    from nluft.config import load_config

    cfg = load_config(args.config, args.overrides)
    quiet_libraries()
    from nluft.train import main as train_main

    results = train_main(cfg, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run)
    return EXIT_STOPPED if "stopped_at_step" in results else 0


def run_distill(args: argparse.Namespace) -> int:
    """`nluft train` with `teacher=RUN_DIR` read as `distill.teacher=RUN_DIR` (required)."""
    overrides = [
        f"distill.{item}" if item.startswith("teacher=") else item for item in args.overrides
    ]
    from nluft.config import load_config

    if load_config(args.config, overrides).distill.teacher is None:
        raise NluftError("distill: name the teacher run: nluft distill CONFIG teacher=RUN_DIR")
    args.overrides = overrides
    return run_train(args)


def run_eval(args: argparse.Namespace) -> int:
    quiet_libraries()
    from nluft.evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir, args.split, args.overrides, args.export)
    if args.json:
        print(json.dumps({"split": args.split, **metrics}))
    else:
        width = max(len(k) for k in metrics)
        for key, value in metrics.items():
            print(f"{key.ljust(width)}  {value:.4f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    records = read_records(args)
    quiet_libraries()
    from nluft.evaluate import predict_run

    for row in predict_run(args.run_dir, records, args.export):
        print(json.dumps(row, ensure_ascii=False))
    return 0


def read_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows to predict on; `--text` uses the run's configured text column names."""
    from nluft.evaluate import load_run_config

    data = load_run_config(args.run_dir, []).data
    if args.text is not None:
        record = {data.text_column: args.text}
        if args.text_pair is not None:
            record[data.text_pair_column or "text_pair"] = args.text_pair
        return [record]
    records = []
    try:
        lines = args.input.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise NluftError(f"--input: cannot read {args.input}: {err}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NluftError(f"{args.input}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or data.text_column not in record:
            raise NluftError(
                f"{args.input}:{number}: expected an object with key '{data.text_column}'"
            )
        records.append(record)
    if not records:
        raise NluftError(f"--input: {args.input} has no records")
    return records


def run_report(args: argparse.Namespace) -> int:
    if (args.run_dir / "study.journal").is_file():  # the output_dir of `nluft search`
        from nluft.search.results import search_report

        print(search_report(args.run_dir, args.out), flush=True)
        return 0
    from nluft.report import report

    print(report(args.run_dir, args.out), flush=True)
    return 0


def run_sweep_summary(args: argparse.Namespace) -> int:
    if (args.sweep_dir / "study.journal").is_file():  # the output_dir of `nluft search`
        from nluft.search.results import search_summary

        print(search_summary(args.sweep_dir), flush=True)
        return 0
    quiet_libraries()
    from nluft.report import sweep_summary

    print(sweep_summary(args.sweep_dir, args.metric), flush=True)
    return 0


def run_search(args: argparse.Namespace) -> int:
    quiet_libraries()
    from nluft.search.runner import run_search as search

    return search(args.config, args.overrides, args.parallel, args.requeue)


def run_export(args: argparse.Namespace) -> int:
    quiet_libraries()
    from nluft.export import export_run

    export_dir = export_run(args.path, args.checkpoint, args.out)
    print(f"export: {export_dir}")
    if args.quantize:
        from nluft.quantize import write_quantized

        out = export_dir.with_name(f"{export_dir.name}-{args.quantize}")
        print(f"export ({args.quantize}): {write_quantized(export_dir, out, args.quantize)}")
    return 0


def run_bench_infer(args: argparse.Namespace) -> int:
    quiet_libraries()
    import torch

    from nluft.bench_infer import bench_infer, format_bench, write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_infer(
        [*args.paths, *args.export], args.rounds, args.latency_examples, args.batch_size, args.split
    )
    print(format_bench(result), flush=True)
    if args.json:
        write_json(result, args.json)
    return 0


def run_check_data(args: argparse.Namespace) -> int:
    """Print the data report; exit 1 when it holds an error, 0 with warnings only."""
    from nluft.config import load_config

    cfg = load_config(args.config, args.overrides)
    quiet_libraries()
    from nluft.data.checks import check_data, format_report
    from nluft.models import build_tokenizer
    from nluft.tasks import build_task

    task = build_task(cfg)
    report = check_data(cfg, task, build_tokenizer(cfg.model, task))
    print(format_report(report))
    return 1 if report.num_errors else 0


def run_plan(args: argparse.Namespace) -> int:
    from nluft.config import load_config

    cfg = load_config(args.config, args.overrides)
    quiet_libraries()
    from nluft.memory import print_plan

    print_plan(cfg, args.nproc, args.gpu_memory)
    return 0


VERBS = {
    "plan": run_plan,
    "train": run_train,
    "distill": run_distill,
    "eval": run_eval,
    "predict": run_predict,
    "check-data": run_check_data,
    "export": run_export,
    "report": run_report,
    "bench-infer": run_bench_infer,
    "sweep-summary": run_sweep_summary,
    "search": run_search,
}


if __name__ == "__main__":
    sys.exit(main())
