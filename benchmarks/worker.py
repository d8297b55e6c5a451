"""One rank of a benchmark case: nluft or the Hugging Face Trainer, measured by the same probes.

The probes are global torch hooks, so neither framework is changed or wrapped:
- after every optimizer step: the wall time, the process's CPU time (all its threads: a figure
  that other programs on a shared machine inflate much less than wall time) and the peak RSS;
- before every training forward of the word-embedding table: real (non-pad) tokens and slots.
Run by benchmarks/vs_hf_trainer.py (directly, or under torchrun for 2 processes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import psutil

PROCESS_START = psutil.Process().create_time()  # before the heavy imports below


class Probes:
    """Step times, peak RSS and token counts of one rank."""

    def __init__(self, vocab_size: int, pad_id: int) -> None:
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.steps: list[float] = []
        self.cpu: list[float] = []
        self.peak_rss = 0
        self.forwards: list[tuple[float, int, int, int]] = []

    def install(self) -> None:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_module_forward_pre_hook(self.on_forward)
        register_optimizer_step_post_hook(self.on_step)

    def on_forward(self, module: Any, args: tuple[Any, ...]) -> None:
        import torch

        if (
            isinstance(module, torch.nn.Embedding)
            and module.training
            and module.num_embeddings == self.vocab_size
            and args
        ):
            ids = args[0]
            real = int((ids != self.pad_id).sum())
            self.forwards.append((time.time(), real, ids.numel(), int(ids.shape[0])))

    def on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps.append(time.time())
        self.cpu.append(time.process_time())
        self.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def dump(self, path: Path, rank: int, world_size: int) -> None:
        record = {
            "rank": rank,
            "world_size": world_size,
            "process_start": PROCESS_START,
            "steps": self.steps,
            "cpu": self.cpu,
            "peak_rss": self.peak_rss,
            "forwards": self.forwards,
        }
        path.write_text(json.dumps(record))


def nluft_overrides(args: argparse.Namespace, world_size: int) -> list[str]:
    return [
        f"output_dir={args.out / 'nluft-run'}",
        f"data.cache_dir={args.out / 'cache'}",  # cold cache: tokenization counts, as for HF
        f"train.max_steps={args.steps}",
        f"train.per_device_train_batch_size={args.batch}",
        "train.eval_strategy='no'",
        "data.max_eval_samples=64",  # the final evaluation is not measured: keep it short
        f"train.logging_steps={args.steps}",
        f"strategy.name={'ddp' if world_size > 1 else 'single'}",
        "tracking.progress_bar=false",
        *args.set,  # a benchmarked option, e.g. train.torch_compile=true
    ]


def run_nluft(args: argparse.Namespace, world_size: int) -> None:
    from nluft.cli import main

    code = main(["train", args.config, *nluft_overrides(args, world_size)])
    if code != 0:
        raise SystemExit(code)


def run_hf(args: argparse.Namespace) -> None:
    """The Trainer on the same train split, model and hyperparameters as the nluft config."""
    import transformers

    from nluft.config import load_config
    from nluft.data.loading import load_raw_splits
    from nluft.models import resolve_model_path

    transformers.logging.set_verbosity_error()
    cfg = load_config(args.config)
    train = load_raw_splits(cfg.data)[0]["train"]  # nluft's seeded split, so the same examples
    labels = sorted(set(train[cfg.data.label_column]))
    path = resolve_model_path(cfg.model.name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    pad128 = args.padding == "max_length"

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = tokenizer(
            batch[cfg.data.text_column],
            truncation=True,
            max_length=cfg.data.max_length,
            padding="max_length" if pad128 else False,
        )
        out["labels"] = [labels.index(v) for v in batch[cfg.data.label_column]]
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    dataset = train.map(encode, batched=True, remove_columns=train.column_names)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels)
    )
    t = cfg.train
    targs = transformers.TrainingArguments(
        output_dir=str(args.out / "hf-run"),
        per_device_train_batch_size=args.batch,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        max_steps=args.steps,
        seed=t.seed,
        # run_glue's defaults: pad to 128, no length grouping
        train_sampling_strategy="random" if pad128 else "group_by_length",
        use_cpu=True,  # else, under torchrun on CPU, the Trainer silently trains world size 1
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        ddp_find_unused_parameters=False,  # nluft does not search for unused parameters either
        average_tokens_across_devices=False,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=args.precision == "bf16",  # autocast on CPU, as nluft's train.precision=bf16
    )
    collator = transformers.DataCollatorWithPadding(tokenizer)
    transformers.Trainer(
        model=model, args=targs, train_dataset=dataset, data_collator=collator
    ).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--framework", choices=["nluft", "hf"], required=True)
    parser.add_argument("--padding", choices=["dynamic", "max_length"], default="dynamic")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="hf only")
    parser.add_argument("--config", default="configs/sentiment.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="per-device train batch")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--pad-id", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--set", action="append", default=[], help="nluft: one more key=value override"
    )
    args = parser.parse_args()
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    args.out.mkdir(parents=True, exist_ok=True)
    probes = Probes(args.vocab_size, args.pad_id)
    probes.install()
    if args.framework == "nluft":
        run_nluft(args, world_size)
    else:
        run_hf(args)
    probes.dump(args.out / f"rank-{rank}.json", rank, world_size)


if __name__ == "__main__":
    sys.exit(main())
