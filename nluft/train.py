"""The training loop and the per-rank `main` that sets it up.

`train` reads top to bottom: step, log, evaluate when due, checkpoint when due, stop when asked.
It never asks which distributed backend runs; the `Strategy` hides that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import transformers

from nluft.checkpoint import (
    Checkpointer,
    TrainState,
    check_run_dir,
    create_run_dir,
    export_model,
    rng_state,
    write_atomic,
    write_plan,
)
from nluft.config import Config, Plan, build_plan
from nluft.data import TaskData, build_data
from nluft.data.collate import MODEL_INPUTS, collate
from nluft.data.sampling import MicroBatch, accumulation_groups, num_terms, train_batches
from nluft.distill import LossFn, check_distill, prepare_distill
from nluft.distributed import Strategy, build_strategy, read_dist_env
from nluft.distributed.base import StepResult
from nluft.distributed.heartbeat import Heartbeat
from nluft.errors import NluftError
from nluft.evaluate import (
    EvaluationStopped,
    head_output,
    score_split,
    write_confusion_matrix,
    write_predictions,
)
from nluft.hardware import describe_hardware
from nluft.memory import configured_line
from nluft.meter import Meter, throughput
from nluft.models import build_model, build_tokenizer, count_parameters
from nluft.models.compile import CompileClock, compile_model
from nluft.models.packing import check_packing, enable_packing
from nluft.models.peft import describe_parameters, num_parameters
from nluft.preemption import StopFlag, requeue_after_stop, will_requeue
from nluft.run_facts import derived, describe_plan, report_memory, report_windowed, run_facts
from nluft.tasks import Task, build_task
from nluft.tracking import Tracker, format_table


@dataclass
class Run:
    """Everything the loop touches, built once by `setup`."""

    cfg: Config
    strategy: Strategy
    task: Task
    tokenizer: Any
    data: TaskData
    plan: Plan
    run_dir: Path
    tracker: Tracker
    checkpointer: Checkpointer
    stop: StopFlag
    loss_fn: LossFn  # the task's loss, or distillation around it (nluft/distill)
    # After each validation: (step, metrics) -> stop? e.g. a search trial's pruner (rank 0 asks).
    reporter: Callable[[int, dict[str, float]], bool] | None = None
    compile_clock: CompileClock = field(default_factory=lambda: CompileClock(False))

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    @cached_property
    def train_features(self) -> Any:
        """The training features' model inputs and labels (what a micro-batch collates)."""
        features = self.data.features["train"]
        names = [c for c in (*MODEL_INPUTS, "labels") if c in features.column_names]
        return features.select_columns(names)

    @cached_property
    def terms(self) -> list[int]:
        """Loss terms per training feature (scored tokens, examples): the weights of the mean."""
        return [num_terms(labels) for labels in self.data.features["train"]["labels"]]


def main(
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    reporter: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Train, evaluate on validation and test, export. Returns the final metrics per split."""
    env = read_dist_env()
    check_packing(cfg)  # refused up front, also on --dry-run
    strategy = build_strategy(cfg, env)
    task = build_task(cfg)
    cfg = check_distill(cfg, task)
    if not dry_run:
        # Check now, create only once data and model are good: bad input leaves the dir untouched.
        run_dir = check_run_dir(cfg, resume, overwrite)
    transformers.set_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.model, task)
    data = build_data(cfg, task, tokenizer, env.is_main, strategy.barrier)
    plan = build_plan(cfg, env.world_size, len(data.features["train"]))
    if dry_run:
        info = describe_plan(cfg, strategy, plan, data)
        if env.is_main:
            print(count_parameters(cfg, task, tokenizer))
            print(configured_line(cfg, env.world_size))
        return info
    cfg, loss_fn = prepare_distill(cfg, task, tokenizer, data, strategy)
    strategy.setup(build_run_model(cfg, task, tokenizer, strategy), plan)
    create_run_dir(cfg, overwrite, env.is_main, strategy.barrier)
    tracker = Tracker(run_dir, env.is_main, cfg.tracking.progress_bar)
    memory = report_memory(strategy, tracker)
    tracker.info(describe_parameters(strategy.unwrapped()))
    run = Run(
        cfg,
        strategy,
        task,
        tokenizer,
        data,
        plan,
        run_dir,
        tracker,
        Checkpointer(run_dir, cfg.train.save_total_limit, strategy, plan),
        StopFlag(),
        loss_fn,
        reporter,
        CompileClock(cfg.train.torch_compile),
    )
    record_start(run, memory)
    state = resume_state(run) if resume else TrainState()
    heartbeat = Heartbeat(run_dir, env, lambda: state.global_step)
    heartbeat.start()
    try:
        state = train(run, state)
        results = stop(run, state) if is_cut_short(run, state) else finish(run, state)
    except RuntimeError as err:  # a failed collective: name the rank that stopped answering
        heartbeat.explain(err, cfg.strategy.timeout_s)
        raise
    finally:
        heartbeat.stop()
        tracker.close()
        strategy.close()
    if "stopped_at_step" in results:
        requeue_after_stop(env)  # last: slurmctld ends every process of a requeued job
    return results


def build_run_model(cfg: Config, task: Task, tokenizer: Any, strategy: Strategy) -> Any:
    """The model as the strategy wants it built, packing hooks and compilation on where asked."""
    with strategy.model_init_context():
        model = build_model(cfg.model, task, tokenizer, cfg.peft, lazy=strategy.defers_weights)
    if cfg.data.packing:
        enable_packing(model)
    compile_model(model, cfg.train)  # in place and lazy: the first forward compiles
    return model


def record_start(run: Run, memory: list[dict[str, int]]) -> None:
    """plan.json (rank 0) and the tracker's record of the run: derived values, parameters,
    model-state memory per rank, hardware."""
    strategy, data, plan = run.strategy, run.data, run.plan
    if strategy.env.is_main:
        trainable, total = num_parameters(strategy.unwrapped())
        params = {"trainable_parameters": trainable, "total_parameters": total}
        facts = {**derived(strategy, data), **params, "memory_per_rank": memory}
        write_plan(run.run_dir, plan, facts)
        report_windowed(run.tracker, data)
    hardware = describe_hardware(strategy.device, strategy.precision, strategy.unwrapped())
    run.tracker.open(run.cfg, run_facts(strategy, plan, data), hardware)


def stop(run: Run, state: TrainState) -> dict[str, Any]:
    """Say where the run stopped (its checkpoint is written) and whether rank 0 requeues it."""
    run.tracker.info(f"stopped at step {state.global_step} on request; resume with --resume")
    run.tracker.log(state.global_step, "event", {"event": "stopped"})
    if will_requeue(run.strategy.env):
        run.tracker.log(state.global_step, "event", {"event": "requeue"})
    return {"stopped_at_step": state.global_step}


def train(run: Run, state: TrainState) -> TrainState:
    """Optimizer steps until `plan.total_steps`, early stopping, or a stop request."""
    strategy, plan, tracker = run.strategy, run.plan, run.tracker
    strategy.unwrapped().train()  # from_pretrained returns the model in eval mode (no dropout)
    tracker.start(plan.total_steps, state.global_step)
    if state.pending_eval:  # a stop cut this step's evaluation short: finish the step first
        settle_step(run, state)
        if state.finished or run.stop.agreed:
            return state
    meter = Meter()
    group_start = (state.batch_in_epoch, rng_state())  # where the current optimizer step began
    while not state.finished:
        micro_batches = epoch_micro_batches(run, state.epoch)
        for i in range(state.batch_in_epoch, len(micro_batches)):
            micro = micro_batches[i]
            if micro.first_in_group:
                group_start = (i, rng_state())
            compiling = run.compile_clock.seconds()
            loss, mask = forward_backward(run, micro)
            meter.start += run.compile_clock.seconds() - compiling  # compiling is not training
            meter.add(loss, mask, micro.examples)
            state.batch_in_epoch = i + 1
            if not micro.last_in_group:
                if run.stop.agree(strategy):  # honoured within one micro-batch, on every rank
                    stop_inside_group(run, state, *group_start)
                    return state
                continue
            result = strategy.step()
            state.global_step += 1
            state.examples_seen += micro.group_examples
            meter.end_step()
            log_train(run, state, meter, result.grad_norm)
            state.finished = state.global_step >= plan.total_steps
            paused = time.perf_counter()
            if is_healthy(run, state, result):  # a NaN/Inf step is never saved
                settle_step(run, state)
            meter.start += time.perf_counter() - paused  # throughput counts training time only
            if state.finished or run.stop.agreed:
                return state
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return state


def forward_backward(run: Run, micro: MicroBatch) -> tuple[Any, Any]:
    """One micro-batch: forward, its loss weighted by its share of the step, backward.

    Returns the weighted loss (its part of the step's loss, times the world size) as a detached
    tensor, read only when a step is logged (no host-device sync per micro-batch), and the
    host-side attention mask, for the meter.
    """
    strategy = run.strategy
    batch = collate(
        run.train_features[micro.indices], run.pad_id, run.cfg.data.pad_to_multiple_of or 1
    )
    labels = batch.pop("labels").to(strategy.device, non_blocking=True)
    inputs = {k: v.to(strategy.device, non_blocking=True) for k, v in batch.items()}
    with nullcontext() if micro.last_in_group else strategy.no_sync():
        with strategy.autocast():
            outputs = strategy.model(**inputs, **run.loss_fn.forward_kwargs)  # type: ignore[misc]
            # A stand-in batch (weight 0) or one without scored tokens adds no gradient.
            loss = (
                run.loss_fn(outputs, inputs, labels, micro.indices)
                if micro.weight
                else head_output(outputs, inputs["attention_mask"]).sum() * 0.0
            )
        strategy.backward(loss * micro.weight)
    return loss.detach() * micro.weight, batch["attention_mask"]


def stop_inside_group(run: Run, state: TrainState, start: int, rng: dict[str, Any]) -> None:
    """Checkpoint the last completed step; the resumed run redoes the interrupted group exactly
    (same micro-batches, same random state); its accumulated gradients are dropped."""
    state.batch_in_epoch = start
    run.checkpointer.save(state, rng)
    run.tracker.log(state.global_step, "event", {"event": "checkpoint"})


def settle_step(run: Run, state: TrainState) -> None:
    """After a step: evaluate when due, then checkpoint when due, on a new best, or to stop."""
    steps_per_epoch = run.plan.steps_per_epoch
    if state.pending_eval or eval_due(run.cfg, state, steps_per_epoch):
        # A stop may cut it short: then the stop checkpoint carries it to the resumed run.
        state.pending_eval = not evaluate_and_track(run, state)
    new_best = state.best_step == state.global_step  # load_best_model_at_end needs it
    stopping = run.stop.agree(run.strategy)  # every step, on every rank: it is a collective
    if save_due(run.cfg, state, steps_per_epoch) or new_best or stopping:
        run.checkpointer.save(state)
        run.tracker.log(state.global_step, "event", {"event": "checkpoint"})


def is_cut_short(run: Run, state: TrainState) -> bool:
    """A stop request ended training early, or cut the last step's evaluation short."""
    return run.stop.agreed and (not state.finished or state.pending_eval)


def is_healthy(run: Run, state: TrainState, result: StepResult) -> bool:
    """False for a step whose loss or gradient was NaN/Inf (the strategy skipped the update).

    The gradient norm is global (reduced over ranks), so every rank agrees. An fp16 loss-scaler
    overflow while the scale calibrates is no fault. After `train.max_bad_steps` faults in a row
    the run stops; its checkpoints predate the fault.
    """
    if not result.fault:
        if not result.skipped:
            state.bad_steps = 0
        return True
    state.bad_steps += 1
    limit = run.cfg.train.max_bad_steps
    run.tracker.info(
        f"step {state.global_step}: NaN/Inf loss or gradient, update skipped "
        f"({state.bad_steps}/{limit})"
    )
    run.tracker.log(state.global_step, "event", {"event": "nonfinite", "count": state.bad_steps})
    if state.bad_steps >= limit:
        kept = run.checkpointer.latest_name()
        raise NluftError(
            f"training diverged: {limit} steps in a row with NaN/Inf loss or gradient (last at "
            f"step {state.global_step}); latest checkpoint before the fault: {kept}; lower "
            "train.learning_rate, check the data, or raise train.max_bad_steps"
        )
    return False


def epoch_micro_batches(run: Run, epoch: int) -> list[MicroBatch]:
    """This rank's micro-batches of one epoch, grouped into optimizer steps (the last may be
    short); every example once per epoch, whatever the world size."""
    env, train = run.strategy.env, run.cfg.train
    batches = train_batches(
        run.data.features["train"]["length"],
        train.per_device_train_batch_size * env.world_size,
        train.seed,
        epoch,
        run.cfg.data.group_by_length,
    )
    accum = train.gradient_accumulation_steps
    micro = accumulation_groups(batches, run.terms, accum, env.rank, env.world_size)
    assert sum(m.last_in_group for m in micro) == run.plan.steps_per_epoch, "plan and loop agree"
    return micro


def eval_due(cfg: Config, state: TrainState, steps_per_epoch: int) -> bool:
    train = cfg.train
    if train.eval_strategy == "no":
        return False
    if train.eval_strategy == "steps":
        return state.global_step % train.eval_steps == 0 or state.finished
    return state.global_step % steps_per_epoch == 0 or state.finished


def save_due(cfg: Config, state: TrainState, steps_per_epoch: int) -> bool:
    if cfg.train.save_steps:
        return state.global_step % cfg.train.save_steps == 0 or state.finished
    return eval_due(cfg, state, steps_per_epoch) or state.finished


def log_train(run: Run, state: TrainState, meter: Meter, grad_norm: float | None) -> None:
    due = (
        state.global_step % run.cfg.train.logging_steps == 0
        or state.global_step >= run.plan.total_steps
    )
    if not (due or run.tracker.shows_progress):
        return  # the losses stay on the device until a step is logged
    stats = meter.summary(run.strategy.env.world_size)
    run.tracker.advance(state.global_step, stats["loss"], stats["examples_per_s"])
    if due:
        record = {
            **stats,
            "loss": run.strategy.mean(stats["loss"]),
            "learning_rate": run.strategy.learning_rate,
            "grad_norm": grad_norm,
            "epoch": round(state.global_step / run.plan.steps_per_epoch, 4),
            **run.compile_clock.describe(),
        }
        run.tracker.log(state.global_step, "train", record)
        state.train_seconds += time.perf_counter() - meter.start
        state.real_tokens += meter.real_tokens
        state.padded_slots += meter.slots
        meter.reset()


def evaluate(
    run: Run, split: str, stoppable: bool = False
) -> tuple[dict[str, float], list[Any], list[Any]]:
    """Metrics, predictions and logits of one split; `stoppable`: a stop request abandons it."""
    data = run.data
    return score_split(
        run.strategy,
        run.task,
        data.examples[split],
        data.features[split],
        run.cfg.train.per_device_eval_batch_size,
        run.pad_id,
        (lambda: run.stop.agree(run.strategy)) if stoppable else None,
    )


def evaluate_and_track(run: Run, state: TrainState) -> bool:
    """Validation metrics; track the best step and early stopping. False: a stop cut it short."""
    if "validation" not in run.data.features:
        return True
    try:
        metrics, _, _ = evaluate(run, "validation", stoppable=True)
    except EvaluationStopped as stop:
        run.tracker.info(f"step {state.global_step}: {stop}; it runs again on resume")
        return False
    run.tracker.log(state.global_step, "eval/validation", metrics)
    run.tracker.info(f"step {state.global_step}: " + short(metrics, run.task.default_metric))
    if run.reporter and run.strategy.any_rank(run.reporter(state.global_step, metrics)):
        run.tracker.info(f"step {state.global_step}: pruned by the search (a worse trial)")
        run.tracker.log(state.global_step, "event", {"event": "pruned"})
        state.finished = True
    name = run.cfg.train.metric_for_best_model or run.task.default_metric
    value = metrics[name]
    greater = run.cfg.train.greater_is_better
    greater = (name != "loss") if greater is None else greater
    margin = run.cfg.train.early_stopping_threshold
    improved = state.best_metric is None or (
        value > state.best_metric + margin if greater else value < state.best_metric - margin
    )
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = (
            value,
            state.global_step,
            0,
        )
    else:
        state.evals_without_improvement += 1
        patience = run.cfg.train.early_stopping_patience
        if patience and state.evals_without_improvement >= patience:
            run.tracker.info(f"early stopping: no improvement in {name} for {patience} evaluations")
            state.finished = True
    return True


def short(metrics: dict[str, float], main_metric: str) -> str:
    keys = [k for k in ("loss", main_metric) if k in metrics]
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def resume_state(run: Run) -> TrainState:
    path = run.checkpointer.latest()
    if path is None:
        run.tracker.info("no checkpoint yet; starting from step 0")
        return TrainState()
    state = run.checkpointer.load(path)
    run.tracker.info(
        f"resumed from {path} (step {state.global_step}, epoch {state.epoch}, "
        f"batch {state.batch_in_epoch})"
    )
    run.tracker.log(state.global_step, "event", {"event": "resume", "checkpoint": path.name})
    return state


def finish(run: Run, state: TrainState) -> dict[str, Any]:
    """Best weights back, final evaluation on validation and test, export, results table."""
    cfg, strategy = run.cfg, run.strategy
    if cfg.train.load_best_model_at_end and state.best_step is not None:
        strategy.load(run.checkpointer.path_of(state.best_step), weights_only=True)
        run.tracker.info(f"loaded best checkpoint (step {state.best_step})")
    run.tracker.close_bar()
    results: dict[str, Any] = {}
    for split in ("validation", "test"):
        if split in run.data.features:
            metrics, predictions, logits = evaluate(run, split)
            results[split] = metrics
            run.tracker.log(state.global_step, f"final/{split}", metrics)
            if strategy.env.is_main:
                save_results(run, split, metrics, predictions, logits)
    export_dir = export_model(strategy, run.tokenizer, run.run_dir / "export")
    best = {"best_step": state.best_step, "best_metric": state.best_metric}
    run.tracker.summarize(results, {**best, "global_step": state.global_step}, export_dir)
    if strategy.env.is_main:
        speed = {**throughput(state, strategy.env.world_size), **run.compile_clock.describe()}
        (run.run_dir / "results").mkdir(exist_ok=True)
        write_atomic(run.run_dir / "results" / "train.json", json.dumps(speed, indent=2))
        compiling = speed.get("compile_seconds")
        print(
            f"train: {speed['steps']} steps in {speed['train_seconds']:.0f} s, "
            f"{speed['examples_per_s']:.1f} examples/s, {speed['tokens_per_s']:.0f} tokens/s, "
            f"padding efficiency {speed['padding_efficiency']:.3f}"
            + (f", {compiling:.0f} s compiling" if compiling is not None else ""),
            flush=True,
        )
        keys = [
            k
            for k in ("loss", run.task.default_metric, "macro_f1")
            if k in next(iter(results.values()), {})
        ]
        if results:
            print(format_table(results, keys), flush=True)
        print(f"export: {export_dir}", flush=True)
    return results


def save_results(
    run: Run, split: str, metrics: dict[str, float], predictions: list[Any], logits: list[Any]
) -> None:
    out = run.run_dir / "results"
    out.mkdir(exist_ok=True)
    write_atomic(out / f"{split}.json", json.dumps(metrics, indent=2))
    data = run.data
    write_predictions(
        out, run.task, split, data.examples[split], data.features[split], predictions, logits
    )
    if run.task.has_confusion_matrix:
        matrix = write_confusion_matrix(out, run.task, split, data.examples[split], predictions)
        run.tracker.log_confusion_matrix(split, run.task.label_names, matrix)
