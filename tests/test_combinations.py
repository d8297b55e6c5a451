"""The combination matrix: strategy x task x accumulation x (resume elsewhere | export + eval).

The full product (7 x 6 x 2 x 2 = 168 runs) is too slow for CI on 2 cores; `all_pairs` builds a
deterministic set of cells in which every PAIR of values of any two factors occurs at least once
(42 cells: every strategy with every task, each with both accumulations and both checks).
Each cell trains a tiny random BERT (no dropout) on a small learnable fixture of its task and
asserts that the training loss fell by `LEARNS` and that its check holds:

- resume: the run cut back to step `RESUME_STEP` and resumed on another world size (2-rank
  strategies on 1 rank; `single` on 1) ends with the uninterrupted run's final metrics;
- export: `nluft export RUN_DIR` (a plain process, whatever strategy wrote the checkpoint) and
  `nluft eval` of that export give the run's own final test metrics.

"big" accumulation is larger than the micro-batches of one epoch (the epoch's one partial group
steps). Launches: 2-rank cells train in one torchrun launch, their resumes run in one 1-rank
torchrun launch (DeepSpeed needs a launcher); `single` cells, exports and evals run in this
process (no start-up cost).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import yaml
from conftest import NOUNS, ROOT, sentiment_rows, write_csv
from test_distributed import cut_at, python_env
from test_ner import tagged_sentences, write_conll

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FACTORS: dict[str, list[str]] = {
    "strategy": ["single", "ddp", "ds0", "ds1", "ds2", "ds3", "fsdp"],
    "task": ["classification", "multilabel", "pair", "ner", "qa", "relation"],
    "accumulation": ["1", "big"],
    "check": ["resume", "export"],
}
STRATEGY = {
    "single": ["strategy.name=single"],
    "ddp": ["strategy.name=ddp"],
    **{f"ds{z}": ["strategy.name=deepspeed", f"strategy.zero_stage={z}"] for z in range(4)},
    "fsdp": ["strategy.name=fsdp"],
}
TRAIN_EXAMPLES = 24  # global micro-batch 8: 3 micro-batches per epoch
# accumulation -> (gradient_accumulation_steps, epochs): 18 steps of 8 examples, or of 24 (the
# epoch's 3 micro-batches are one partial group of 4)
ACCUMULATION = {"1": (1, 6), "big": (4, 18)}
RESUME_STEP = 9
LEARNS = 0.10  # the mean of the last 3 logged losses is at least 10% below that of the first 3
# Learning rates at which the tiny random model fits each fixture within 18 steps.
LEARNING_RATE = {"classification": 1e-2, "pair": 1e-2, "multilabel": 1e-2}
RTOL = 1e-3  # metrics after a resume on another world size: float sums in another order
LAUNCH_TIMEOUT = 600


def all_pairs(factors: dict[str, list[str]]) -> list[dict[str, str]]:
    """Cells covering every pair of values of any two factors (deterministic greedy).

    The product of the two largest factors, then each further factor's value chosen per cell to
    cover the most pairs not yet covered (ties: the value used least so far).
    """
    names = sorted(factors, key=lambda n: -len(factors[n]))
    first, second = names[:2]
    cells = [{first: a, second: b} for a in factors[first] for b in factors[second]]
    for k, name in enumerate(names[2:], start=2):
        earlier = names[:k]
        todo = {(o, cell[o], v) for cell in cells for o in earlier for v in factors[name]}
        used = dict.fromkeys(factors[name], 0)
        for cell in cells:
            gains = {
                v: (sum((o, cell[o], v) in todo for o in earlier), -used[v]) for v in factors[name]
            }
            cell[name] = max(factors[name], key=gains.__getitem__)
            used[cell[name]] += 1
            todo -= {(o, cell[o], cell[name]) for o in earlier}
        assert not todo, f"pairs left uncovered: {sorted(todo)[:5]}"
    return cells


CELLS = all_pairs(FACTORS)


def cell_id(cell: dict[str, str]) -> str:
    return "-".join(cell[name] for name in FACTORS)


def test_cells_cover_every_pair_of_values() -> None:
    for a, b in itertools.combinations(FACTORS, 2):
        seen = {(cell[a], cell[b]) for cell in CELLS}
        assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)
    assert len(CELLS) == len(FACTORS["strategy"]) * len(FACTORS["task"])


# --- fixtures: one small learnable data set per task -------------------------------------------


def task_section(task: str, data_dir: Path) -> dict[str, Any]:
    """The config of one task: data files (cut to TRAIN_EXAMPLES) and its own section."""
    fixtures = ROOT / "tests" / "fixtures"
    limits = {"max_train_samples": TRAIN_EXAMPLES, "max_eval_samples": 16, "max_length": 48}
    files = {
        "classification": {f"{s}_file": str(data_dir / f"sentiment-{s}.csv") for s in SPLITS},
        "ner": {f"{s}_file": str(data_dir / f"ner-{s}.conll") for s in SPLITS},
        "multilabel": {f"{s}_file": str(fixtures / "multilabel" / f"{s}.jsonl") for s in SPLITS},
        "pair": {f"{s}_file": str(data_dir / f"pair-{s}.csv") for s in SPLITS},
        "qa": {f"{s}_file": str(fixtures / "qa" / f"{s}-v2.0.json") for s in SPLITS},
        "relation": {f"{s}_file": str(fixtures / "relation" / f"{s}.jsonl") for s in SPLITS},
    }[task]
    extra: dict[str, Any] = {
        "classification": {},
        "ner": {"task": "ner", "ner": {"stride": 4}},
        "multilabel": {"data": {"label_column": "labels"}, "classification": {"multi_label": True}},
        "pair": {"data": {"text_column": "premise", "text_pair_column": "hypothesis"}},
        "qa": {
            "task": "qa",
            "data": {"file_format": "squad", "max_length": 64},
            "qa": {"doc_stride": 16, "version_2_with_negative": True},
        },
        "relation": {"task": "relation", "data": {"label_column": "relation"}},
    }[task]
    return {
        "task": extra.get("task", "classification"),
        "data": {**files, **limits, **extra.get("data", {})},
        **{k: v for k, v in extra.items() if k not in ("task", "data")},
    }


SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("combination-data")
    for seed, split in enumerate(SPLITS, start=1):
        write_csv(out / f"sentiment-{split}.csv", sentiment_rows(40, seed=seed))
        write_conll(out / f"ner-{split}.conll", tagged_sentences(40, seed=seed))
        write_csv(out / f"pair-{split}.csv", pair_rows(40, seed=seed))
    return out


def pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Sentence pairs whose label follows the review in the first (the pair is encoded together)."""
    rows = sentiment_rows(n, seed=seed)
    return [
        {"premise": r["text"], "hypothesis": f"the {NOUNS[i % len(NOUNS)]}", "label": r["label"]}
        for i, r in enumerate(rows)
    ]


def cell_config(tmp: Path, cell: dict[str, str], model_dir: Path, data_dir: Path) -> Path:
    """A YAML config for one cell (2-rank strategies give 4 examples per rank, single 8)."""
    accum, epochs = ACCUMULATION[cell["accumulation"]]
    section = task_section(cell["task"], data_dir)
    cfg = {
        **section,
        "output_dir": str(tmp / cell_id(cell)),
        "model": {"name_or_path": str(model_dir)},
        "data": {**section["data"], "cache_dir": str(tmp / "cache")},
        "train": {
            "learning_rate": LEARNING_RATE.get(cell["task"], 5e-3),
            "lr_scheduler_type": "constant",
            "num_train_epochs": epochs,
            "gradient_accumulation_steps": accum,
            "per_device_train_batch_size": 8 if cell["strategy"] == "single" else 4,
            "per_device_eval_batch_size": 8,
            "logging_steps": 1,
            "eval_strategy": "steps",
            "eval_steps": RESUME_STEP,
            "save_steps": RESUME_STEP,
            "save_total_limit": 10,
            "seed": 3,
        },
        "tracking": {"progress_bar": False},
    }
    path = tmp / f"{cell_id(cell)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_job(config: Path, *overrides: str) -> dict[str, Any]:
    return {"kind": "cli", "argv": ["train", str(config), *overrides]}


# --- the runs: two torchrun launches and this process ------------------------------------------


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_no_dropout: Path,
    data_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Train the selected cells (all, or those `-k` picks), then resume or export + evaluate."""
    tmp = tmp_path_factory.mktemp("combinations")
    chosen = {
        item.callspec.id for item in request.session.items if item.name.startswith("test_cell[")
    }
    cells = [c for c in CELLS if cell_id(c) in chosen]
    configs = {cell_id(c): cell_config(tmp, c, tiny_model_no_dropout, data_dir) for c in cells}
    single = [c for c in cells if c["strategy"] == "single"]
    sharded = [c for c in cells if c["strategy"] != "single"]
    strategy_of = {cell_id(c): STRATEGY[c["strategy"]] for c in CELLS}
    dist_jobs.run_jobs([train_job(configs[cell_id(c)], *strategy_of[cell_id(c)]) for c in single])
    jobs = [train_job(configs[cell_id(c)], *strategy_of[cell_id(c)]) for c in sharded]
    if jobs:
        torchrun(jobs, tmp / "train.json", 2)
    resumes = {"single": [], "other": []}  # type: dict[str, list[dict[str, Any]]]
    for cell in (c for c in cells if c["check"] == "resume"):
        name = cell_id(cell)
        cut = cut_at(tmp / name, RESUME_STEP, tmp / f"{name}-resumed")
        argv = [*strategy_of[name], "train.per_device_train_batch_size=8", f"output_dir={cut}"]
        job = train_job(configs[name], *argv, "--resume")
        resumes["single" if cell["strategy"] == "single" else "other"].append(job)
    dist_jobs.run_jobs(resumes["single"])
    if resumes["other"]:
        torchrun(resumes["other"], tmp / "resume.json", 1)
    results = {}
    for cell in cells:
        name = cell_id(cell)
        results[name] = {"run": tmp / name}
        if cell["check"] == "resume":
            results[name]["resumed"] = tmp / f"{name}-resumed"
        else:
            try:  # a failing cell fails alone
                results[name]["eval"] = export_and_eval(tmp / name)
            except Exception as err:  # re-raised by the cell's test
                results[name]["eval"] = err
    return results


def torchrun(jobs: list[dict[str, Any]], path: Path, nproc: int) -> None:
    """The jobs under torchrun (DeepSpeed needs a launcher's environment even for one rank)."""
    path.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
    cmd += [str(ROOT / "tests" / "dist_jobs.py"), str(path)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-8000:]


def export_and_eval(run_dir: Path) -> dict[str, float]:
    """`nluft export RUN_DIR` (best checkpoint) in this plain process, then `nluft eval`."""
    from nluft.evaluate import evaluate_run
    from nluft.export import export_run

    shutil.rmtree(run_dir / "export")
    export_run(run_dir)
    return evaluate_run(run_dir, "test", [])


# --- the checks --------------------------------------------------------------------------------


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results" / "test.json").read_text())  # type: ignore[no-any-return]


def assert_close(got: dict[str, float], want: dict[str, float], rtol: float) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=rtol, abs_tol=rtol), (key, got[key], value)


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_cell(matrix: dict[str, dict[str, Any]], cell: dict[str, str]) -> None:
    result = matrix[cell_id(cell)]
    run = records(result["run"])
    losses = [r["loss"] for r in run if r["kind"] == "train"]
    accum, epochs = ACCUMULATION[cell["accumulation"]]
    assert len(losses) == epochs * math.ceil(TRAIN_EXAMPLES / 8 / accum), "one log per step"
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end <= (1 - LEARNS) * start, f"loss fell only from {start:.4f} to {end:.4f}"
    if cell["check"] == "export":
        if isinstance(result["eval"], Exception):
            raise result["eval"]
        assert_close(result["eval"], final(result["run"]), 1e-6)
        return
    resumed = records(result["resumed"])
    steps = [r["step"] for r in resumed if r["kind"] == "train"]
    assert steps == list(range(1, len(losses) + 1)), "every step logged once"
    assert_close(final(result["resumed"]), final(result["run"]), RTOL)
