"""2-process torchrun runs on gloo: loss parity with one process, exact distributed evaluation,
checkpoints that resume on another number of ranks, export, and `nluft launch` itself.

The expensive part is process start-up (10-20 s of imports per launch), so the runs are made once
per module by the `runs` fixture, in one torchrun launch between two in-process phases:
    1. this process:   the single-process reference run (checkpoints every 10 steps)
    2. torchrun x 2:   every PARITY config, resume 1 -> 2 from run 1's step 20, 2-rank eval
    3. this process:   resume 2 -> 1 from the ddp run's step 20, re-export, 1-rank evals
To add a backend (zero1/2/3, fsdp), add its overrides to PARITY: it joins launch 2 and the
parametrised parity test. To add a task to the exact-eval check, add an eval job of a run of it
to launch 2 and to phase 3 (see `Runs.evaluate`) and a parameter to the test. NER and QA, whose
examples are windowed into several features, are trained briefly in phase 1 (see WINDOWED).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import yaml
from conftest import ROOT
from test_ner import tagged_sentences, write_conll
from test_qa import FIXTURES

from nluft.metrics import entity_scores, squad_scores

pytestmark = pytest.mark.distributed

# Global batch 16 in every run: one process takes 8 x 2 accumulation steps; 2 ranks take 4 each.
COMMON = [
    "train.num_train_epochs=3",
    "train.learning_rate=3e-3",
    "train.gradient_accumulation_steps=2",
    "train.logging_steps=1",
    "train.save_steps=10",
    "train.save_total_limit=5",
    "train.eval_strategy=steps",
    "train.eval_steps=10",  # evaluate where checkpoints are saved: the best one is always kept
]
SINGLE = ["strategy.name=single", "train.per_device_train_batch_size=8"]
# Backend name -> its overrides on 2 ranks; each gets the same global batch and seed as SINGLE.
PARITY = {
    "ddp": ["strategy.name=ddp", "train.per_device_train_batch_size=4"],
    # torch.compile inside DDP (dynamic shapes, accumulation under no_sync, compiled eval);
    # aot_eager: dynamo + AOTAutograd without inductor's minutes of C++ generation on a CPU.
    "ddp_compiled": [
        "strategy.name=ddp",
        "train.per_device_train_batch_size=4",
        "train.torch_compile=true",
        "train.torch_compile_backend=aot_eager",
    ],
}
# A student on DeepSpeed ZeRO-2 (2 ranks), in the same launch (distillation parity only).
ZERO2 = ["strategy.name=deepspeed", "strategy.zero_stage=2", "train.per_device_train_batch_size=4"]
RESUME_STEP = 20  # mid-epoch: the 10th of 15 steps of epoch 2
TOTAL_STEPS = 45  # 240 examples / 16 per step x 3 epochs
# Relative tolerance of the loss curves and final losses: float sums in another order (per-rank
# means averaged by all-reduce) differ by ~1e-7 per step and grow a little through Adam.
LOSS_RTOL = 1e-5
LAUNCH_TIMEOUT = 300
# Windowed tasks, each trained briefly on one process (its predictions need only be varied):
# task -> (examples in its odd test file, eval batch size). The test files give an odd number of
# features F and the batch size divides F // 2, so rank 1 runs one batch fewer than rank 0 and
# repeats a batch whose output it must discard.
WINDOWED = {"ner": (31, 4), "qa": (49, 7)}
WINDOWED_TRAIN = [
    "train.max_steps=20",
    "train.learning_rate=5e-3",
    "train.per_device_train_batch_size=16",
    "train.eval_strategy='no'",
    "train.logging_steps=5",
]


def python_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run_jobs(jobs: list[dict[str, Any]], path: Path, nproc: int) -> None:
    """Run the harness (tests/dist_jobs.py): under torchrun on `nproc` ranks, or, for one
    process, right here (this process has imported torch already: no start-up cost)."""
    if nproc == 1:
        dist_jobs.run_jobs(jobs)
        return
    path.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
    cmd += [str(ROOT / "tests" / "dist_jobs.py"), str(path)]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-8000:]


def cut_at(run_dir: Path, step: int, dest: Path) -> Path:
    """A copy of a run as it was at `step`: the config, checkpoints up to it, its metrics."""
    dest.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        if int(ckpt.name.removeprefix("step-")) <= step:
            shutil.copytree(ckpt, dest / "checkpoints" / ckpt.name)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [x for x in lines if json.loads(x)["step"] <= step]
    (dest / "metrics.jsonl").write_text("".join(x + "\n" for x in kept))
    return dest


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT without dropout: dropout masks come from per-rank RNG streams, so runs on
    different numbers of ranks can only match without it."""
    out = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


class Runs:
    """Builds the jobs of the three launches; `path[name]` is each run dir or result file."""

    def __init__(self, tmp: Path, config: Path, odd_test: Path) -> None:
        self.tmp, self.config, self.odd_test = tmp, config, odd_test
        self.path: dict[str, Path] = {}

    def train(self, name: str, *overrides: str) -> dict[str, Any]:
        self.path[name] = self.tmp / name
        argv = ["train", str(self.config), *COMMON, *overrides, f"output_dir={self.path[name]}"]
        return {"kind": "cli", "argv": argv}

    def evaluate(self, tag: str, run: str, strategy: str, **extra: Any) -> dict[str, Any]:
        self.path[tag] = self.tmp / f"{tag}.json"
        job = {"kind": "eval", "run_dir": str(self.path[run]), "split": "test"}
        return {**job, "strategy": strategy, "out": str(self.path[tag]), **extra}

    def odd(self) -> dict[str, Any]:
        return {"overrides": [f"data.test_file={self.odd_test}"]}

    def train_windowed(self, task: str, config: Path) -> dict[str, Any]:
        self.path[task] = self.tmp / task
        argv = ["train", str(config), *WINDOWED_TRAIN, f"output_dir={self.path[task]}"]
        return {"kind": "cli", "argv": argv}

    def evaluate_windowed(self, task: str, strategy: str, ranks: int) -> dict[str, Any]:
        batch = f"train.per_device_eval_batch_size={WINDOWED[task][1]}"
        return self.evaluate(f"{task}_{ranks}", task, strategy, overrides=[batch])


def ner_config(tmp: Path, model: Path) -> dict[str, Any]:
    """NER on CoNLL files; 3 of the 31 test sentences are longer than max_length (windows)."""
    test = tagged_sentences(WINDOWED["ner"][0] - 3, seed=12)
    test += [test[0] + test[1] + test[2], test[3] + test[4] + test[5], test[6] + test[7]]
    files = {
        "train": write_conll(tmp / "ner-train.conll", tagged_sentences(80, seed=11)),
        "test": write_conll(tmp / "ner-test.conll", test),
    }
    return {
        "task": "ner",
        "model": {"name_or_path": str(model)},
        "data": {**{f"{s}_file": str(p) for s, p in files.items()}, "max_length": 16},
        "ner": {"stride": 4},
    }


def qa_config(tmp: Path, model: Path) -> dict[str, Any]:
    """SQuAD v2.0 QA; contexts longer than max_length (doc_stride windows), 49 test questions."""
    document = json.loads((FIXTURES / "test-v2.0.json").read_text())
    document["data"][-1]["paragraphs"][-1]["qas"].pop()  # 50 -> 49 questions
    test = tmp / "qa-test.json"
    test.write_text(json.dumps(document, indent=1))
    return {
        "task": "qa",
        "model": {"name_or_path": str(model)},
        "data": {
            "train_file": str(FIXTURES / "train-v2.0.json"),
            "test_file": str(test),
            "max_length": 56,
        },
        # Always answer: a model trained this briefly predicts "no answer" everywhere, which
        # would hide a mis-merge of windows; the best span over all windows decides instead.
        "qa": {"doc_stride": 8, "version_2_with_negative": True, "null_score_diff_threshold": 1e9},
    }


def windowed_configs(tmp: Path, model: Path) -> dict[str, Path]:
    """One config file per windowed task."""
    import yaml

    paths = {}
    for task, build in (("ner", ner_config), ("qa", qa_config)):
        cfg = build(tmp, model)
        cfg["output_dir"] = str(tmp / "unused")
        cfg["data"] = {**cfg["data"], "cache_dir": str(tmp / "cache")}
        cfg.update(train={"seed": 5}, tracking={"progress_bar": False})
        paths[task] = tmp / f"{task}.yaml"
        paths[task].write_text(yaml.safe_dump(cfg))
    return paths


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
    no_dropout_model: Path,
    sentiment_files: dict[str, Path],
) -> dict[str, Path]:
    """All runs of this module, made in three launches (see the module docstring)."""
    import yaml

    tmp = tmp_path_factory.mktemp("dist")
    odd_test = tmp / "odd_test.csv"  # 59 examples: 2 ranks take 30 and 29, nothing padded
    odd_test.write_text("\n".join(sentiment_files["test"].read_text().splitlines()[:60]) + "\n")
    cfg = {
        "task": "classification",
        "output_dir": str(tmp / "unused"),
        "model": {"name_or_path": str(no_dropout_model)},
        "data": {
            "train_file": str(sentiment_files["train"]),
            "validation_file": str(sentiment_files["validation"]),
            "test_file": str(sentiment_files["test"]),
            "max_length": 32,
            "cache_dir": str(tmp / "cache"),
        },
        "train": {"seed": 7, "per_device_eval_batch_size": 7},
        "tracking": {"progress_bar": False},
    }
    config = tmp / "base.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = Runs(tmp, config, odd_test)
    windowed = windowed_configs(tmp, no_dropout_model)
    jobs = [r.train("single", *SINGLE), *(r.train_windowed(t, windowed[t]) for t in WINDOWED)]
    run_jobs(jobs, tmp / "jobs1.json", nproc=1)

    cut_at(r.path["single"], RESUME_STEP, tmp / "r12")
    jobs = [r.train(name, *overrides) for name, overrides in PARITY.items()]
    jobs += [r.train(name, *PARITY["ddp"], *overrides) for name, overrides in distill(r).items()]
    jobs.append(r.train("distill_zero2", *ZERO2, *distill(r)["distill_ddp"]))
    resume_12 = r.train("r12", *PARITY["ddp"])
    jobs += stop_and_resume(r)
    jobs += [
        {**resume_12, "argv": [*resume_12["argv"], "--resume"]},
        r.evaluate("eval_2_ranks", "single", "ddp", **r.odd()),
        *(r.evaluate_windowed(task, "ddp", 2) for task in WINDOWED),
    ]
    run_jobs(jobs, tmp / "jobs2.json", nproc=2)

    cut_at(r.path["ddp"], RESUME_STEP, tmp / "r21")
    resume_21 = r.train("r21", "strategy.name=ddp", "train.per_device_train_batch_size=8")
    reexport = r.path["ddp"] / "reexport"
    jobs = [
        r.train("distill_single", *SINGLE, *distill(r)["distill_ddp"]),
        {**resume_21, "argv": [*resume_21["argv"], "--resume"]},
        {"kind": "cli", "argv": ["export", str(r.path["ddp"]), "--out", str(reexport)]},
        r.evaluate("eval_1_rank", "single", "single", **r.odd()),
        r.evaluate("eval_reexport", "ddp", "single", export_dir=str(reexport)),
        *(r.evaluate_windowed(task, "single", 1) for task in WINDOWED),
    ]
    run_jobs(jobs, tmp / "jobs3.json", nproc=1)
    return r.path


# One optimizer step per epoch on 2 ranks: 80 examples, 2 per rank, a group of 20 micro-batches.
LONG_GROUPS = [
    *PARITY["ddp"],
    "train.per_device_train_batch_size=2",
    "train.gradient_accumulation_steps=1000",
    "train.num_train_epochs=2",
    "train.eval_strategy=epoch",
    "data.max_train_samples=80",
]


def stop_and_resume(r: Runs) -> list[dict[str, Any]]:
    """Long accumulation groups on 2 ranks: uninterrupted; stopped by a SIGTERM to rank 0 inside
    its first group; resumed."""
    whole, stopped = r.train("groups_whole", *LONG_GROUPS), r.train("groups", *LONG_GROUPS)
    stop = {**stopped, "kind": "stop", "rank": 0, "when": str(r.path["groups"] / "plan.json")}
    return [whole, stop, {**stopped, "argv": [*stopped["argv"], "--resume"]}]


def distill(r: Runs) -> dict[str, list[str]]:
    """Students of run "single" (its layer 0): cached soft targets, and online (issue 12)."""
    student = [f"distill.teacher={r.path['single']}", "distill.keep_every=2"]
    return {"distill_ddp": student, "distill_online_ddp": [*student, "distill.cache=false"]}


def test_distillation_on_two_ranks_matches_one_process(runs: dict[str, Path]) -> None:
    """Cached soft targets (rank 0 computes, both read) and online ones (each rank runs the
    teacher on its micro-batches) give the single-process distillation's loss curve, on ddp and
    (cached) on DeepSpeed ZeRO-2."""
    want = losses(runs["distill_single"])
    assert sorted(want) == list(range(1, TOTAL_STEPS + 1))
    for run in ("distill_ddp", "distill_online_ddp", "distill_zero2"):
        got = losses(runs[run])
        for step, loss in want.items():
            assert got[step] == pytest.approx(loss, rel=1e-4), (run, step)
    assert want != losses(runs["single"])  # the soft targets changed the objective
    student = json.loads((runs["distill_ddp"] / "export" / "config.json").read_text())
    assert student["num_hidden_layers"] == 1


def test_stop_inside_an_accumulation_group_on_2_ranks_and_resume_redoes_it(
    runs: dict[str, Path],
) -> None:
    """As tests/test_accumulation.py on one process: the stop (on rank 0 only) is agreed within
    a micro-batch, the checkpoint is the last completed step (none: step 0), and the resumed run
    ends exactly like the uninterrupted one."""
    run_dir, whole = runs["groups"], runs["groups_whole"]
    events = [(e["step"], e["event"]) for e in records(run_dir, "event")]
    assert events[:2] == [(0, "checkpoint"), (0, "stopped")], events
    state = json.loads(
        (run_dir / "checkpoints" / "step-00000000" / "trainer_state.json").read_text()
    )
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (0, 0, 0)
    assert sorted(losses(run_dir)) == sorted(losses(whole)) == [1, 2]
    assert losses(run_dir) == losses(whole)
    assert final(run_dir)["validation"] == final(whole)["validation"]


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def final(run_dir: Path) -> dict[str, dict[str, float]]:
    return {
        s: json.loads((run_dir / "results" / f"{s}.json").read_text())
        for s in ("validation", "test")
    }


def assert_same_final_metrics(got: Path, want: Path) -> None:
    for split, metrics in final(want).items():
        assert final(got)[split]["loss"] == pytest.approx(metrics["loss"], rel=LOSS_RTOL), split
        assert final(got)[split]["accuracy"] == metrics["accuracy"], split


@pytest.mark.parametrize("backend", list(PARITY))
def test_loss_curve_matches_single_process(runs: dict[str, Path], backend: str) -> None:
    want, got = losses(runs["single"]), losses(runs[backend])
    assert sorted(got) == list(range(1, TOTAL_STEPS + 1))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=LOSS_RTOL), f"step {step}"
    assert_same_final_metrics(runs[backend], runs["single"])
    plan = json.loads((runs[backend] / "plan.json").read_text())
    strategy = backend.removesuffix("_compiled")
    assert (plan["world_size"], plan["effective_batch"], plan["strategy"]) == (2, 16, strategy)


def test_ddp_checkpoint_is_one_copy_written_by_rank_0(runs: dict[str, Path]) -> None:
    ckpt = runs["ddp"] / "checkpoints" / f"step-{RESUME_STEP:08d}"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "rng-0.pt", "rng-1.pt", "MANIFEST.json"} <= names


@pytest.mark.parametrize(("resumed", "uninterrupted"), [("r21", "ddp"), ("r12", "single")])
def test_resume_on_another_number_of_ranks(
    runs: dict[str, Path], resumed: str, uninterrupted: str
) -> None:
    """2 -> 1 and 1 -> 2 ranks from a mid-epoch checkpoint end like the uninterrupted run."""
    assert_same_final_metrics(runs[resumed], runs[uninterrupted])
    assert sorted(losses(runs[resumed])) == list(range(1, TOTAL_STEPS + 1)), "no step lost"
    resumes = [e for e in records(runs[resumed], "event") if e["event"] == "resume"]
    assert [e["checkpoint"] for e in resumes] == [f"step-{RESUME_STEP:08d}"]


def test_eval_on_two_ranks_is_exact(runs: dict[str, Path]) -> None:
    """Same predictions and metrics on 1 and 2 ranks; the 59 examples each counted once."""
    one = json.loads(runs["eval_1_rank"].read_text())
    two = json.loads(runs["eval_2_ranks"].read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(two["predictions"]) == two["num_examples"] == 59
    assert two["predictions"] == one["predictions"]
    assert two["metrics"]["accuracy"] == one["metrics"]["accuracy"]
    assert two["metrics"]["macro_f1"] == one["metrics"]["macro_f1"]
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], rel=1e-6)
    hits = sum(p == r for p, r in zip(two["predictions"], two["references"], strict=True))
    assert two["metrics"]["accuracy"] == pytest.approx(hits / 59, abs=1e-12)


def entity_count(tag_lists: list[list[str]]) -> int:
    return sum(tag.startswith("B-") for tags in tag_lists for tag in tags)


@pytest.mark.parametrize("task", list(WINDOWED))
def test_windowed_eval_on_two_ranks_is_exact(runs: dict[str, Path], task: str) -> None:
    """NER and QA on 1 and 2 ranks: windows of one example run on different ranks, rank 1 runs a
    discarded repeat batch; the same predictions, every example scored once, equal metrics."""
    one = json.loads(runs[f"{task}_1"].read_text())
    two = json.loads(runs[f"{task}_2"].read_text())
    num_examples, batch = WINDOWED[task]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["num_windowed"] > 0, "no example was split into windows"
    assert two["num_features"] % 2 == 1 and (two["num_features"] // 2) % batch == 0
    assert len(two["predictions"]) == two["num_examples"] == num_examples
    assert two["predictions"] == one["predictions"]
    assert len({json.dumps(p) for p in two["predictions"]}) > 5, "predictions too uniform to test"
    # Loss: the mean over all scored labels, summed in another order on 2 ranks (~1e-7 apart).
    assert two["metrics"].pop("loss") == pytest.approx(one["metrics"].pop("loss"), rel=1e-6)
    assert two["metrics"] == one["metrics"]
    if task == "ner":
        assert [len(p) for p in two["predictions"]] == [len(r) for r in two["references"]]
        assert two["metrics"] == entity_scores(two["references"], two["predictions"])
        supports = [v for k, v in two["metrics"].items() if k.endswith("/support")]
        assert sum(supports) == entity_count(two["references"]) > num_examples
    else:
        assert two["metrics"] == squad_scores(two["predictions"], two["references"])
        assert two["metrics"]["total"] == num_examples


def test_export_of_a_2_rank_run_reevaluates_to_its_results(runs: dict[str, Path]) -> None:
    """`nluft export RUN_DIR` (best checkpoint) equals the end-of-training export, by metrics
    and by weights."""
    from safetensors.torch import load_file

    got = json.loads(runs["eval_reexport"].read_text())["metrics"]
    want = final(runs["ddp"])["test"]
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    end = load_file(runs["ddp"] / "export" / "model.safetensors")
    again = load_file(runs["ddp"] / "reexport" / "model.safetensors")
    assert end.keys() == again.keys()
    assert all(end[k].equal(again[k]) for k in end)


def free_or_taken(port: int) -> socket.socket | None:
    """Listen on `port` so nobody else can (None when something already does)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_nluft_launch_trains_on_2_ranks_while_port_29500_is_taken(
    tiny_config: Path, tmp_path: Path
) -> None:
    """The real console script: torchrun's runner, c10d on a free port, ddp on 2 ranks."""
    script = Path(sys.executable).with_name("nluft")
    run_dir = tmp_path / "launched"
    argv = [str(script), "launch", "--nproc-per-node", "2", str(tiny_config)]
    argv += ["strategy.name=ddp", "train.max_steps=6", "train.eval_strategy='no'"]
    argv += ["train.per_device_train_batch_size=8", f"output_dir={run_dir}"]
    blocker = free_or_taken(29500)
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
        )
    finally:
        if blocker is not None:
            blocker.close()
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "--rdzv-endpoint=127.0.0.1:0" in proc.stderr
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["world_size"], plan["effective_batch"], plan["strategy"]) == (2, 16, "ddp")
    assert (run_dir / "export" / "model.safetensors").is_file()
    # Every test example scored exactly once across the 2 ranks: per-class support = the file's.
    test = json.loads((run_dir / "results" / "test.json").read_text())
    cfg = yaml.safe_load(tiny_config.read_text())
    rows = Path(cfg["data"]["test_file"]).read_text().splitlines()
    labels = [row["label"] for row in csv.DictReader(rows)]
    assert {k: v for k, v in test.items() if k.endswith("/support")} == {
        f"{name}/support": labels.count(name) for name in set(labels)
    }
    assert test["accuracy"] * len(labels) == pytest.approx(round(test["accuracy"] * len(labels)))
