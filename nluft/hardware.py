"""What the hardware does for a run: memory in use and model FLOPs utilisation (MFU).

MFU = achieved model FLOPs / (the devices' dense peak at the run's precision). Model FLOPs per
trained token: 6 x (parameters outside the embedding tables), the usual estimate for a forward and
backward pass, plus the attention term of the PaLM paper (appendix B), 12 x layers x hidden x the
context the token attends to. With dynamic padding the context is the token's own sequence length,
so the loop logs `attention_context` = sum(length^2) / sum(length) over its real tokens. Causal
models are counted like encoders (full context), as PaLM does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Dense (no sparsity) peak TFLOP/s per device from the vendors' datasheets: (16-bit tensor core,
# plain fp32 without TF32, whether bf16 runs on tensor cores). Patterns are matched in order
# against torch.cuda.get_device_name(), so longer names come before their prefixes.
PEAK_TFLOPS: tuple[tuple[str, float, float, bool], ...] = (
    (r"\bGH200\b", 989.0, 67.0, True),
    (r"\bH200\b", 989.0, 67.0, True),
    (r"\bH100 PCIe\b", 756.0, 51.0, True),
    (r"\bH100 NVL\b", 835.0, 60.0, True),
    (r"\bH100\b", 989.0, 67.0, True),
    (r"\bA100\b", 312.0, 19.5, True),
    (r"\bL40S\b", 362.0, 91.6, True),
    (r"\bL4\b", 121.0, 30.3, True),
    (r"\bA10\b", 125.0, 31.2, True),
    (r"\bV100\b", 125.0, 15.7, False),
    (r"\bT4\b", 65.0, 8.1, False),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device at `precision`; None when the device is not in the table."""
    for pattern, half, fp32, has_bf16 in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            if precision == "fp32":
                return fp32 * 1e12
            if precision == "bf16" and not has_bf16:
                return None
            return half * 1e12
    return None


def flops_per_token(model: Any) -> float:
    """Training FLOPs per token: 6 x parameters outside embedding tables (whole model).

    Every embedding table is a lookup, not a matmul: word, position and token-type embeddings
    are left out (position embeddings alone are 512 x hidden, as many parameters as two layers
    of a tiny model). A tied output projection (a decoder's LM head) still multiplies, but
    nluft's heads are classification heads. Checked against torch's FLOP counter on a real
    forward and backward (tests/test_tracking.py).
    """
    import torch

    def size(p: Any) -> int:
        # ZeRO-3 leaves an empty tensor per parameter and keeps the full size in `ds_numel`.
        return int(getattr(p, "ds_numel", p.numel()))

    tables = {
        id(p)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    return 6.0 * sum(size(p) for p in model.parameters() if id(p) not in tables)


def attention_flops_per_context(model: Any) -> float:
    """12 x layers x hidden size (the attention term per token per attended token); 0 if unknown."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    return 12.0 * layers * hidden if layers and hidden else 0.0


@dataclass(frozen=True)
class Hardware:
    """The device a rank trains on, its peak, and the model's FLOPs per token."""

    device: str
    device_name: str
    peak_flops: float | None
    flops_per_token: float
    attention_flops_per_context: float = 0.0  # 12 x layers x hidden, per token per attended token
    hint: str | None = None  # a faster setting this hardware offers, told once at the start

    def sample(
        self, tokens_per_s: float | None, world_size: int, context: float = 0.0
    ) -> dict[str, float]:
        """Memory now (GPU max allocated when on CUDA, process RSS always) and MFU when known.

        `context`: the mean number of tokens a trained token attends to (`attention_context`).
        """
        import psutil

        out = {"rss_gb": psutil.Process().memory_info().rss / 2**30}
        if self.device.startswith("cuda"):
            import torch

            out["gpu_max_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.peak_flops and tokens_per_s is not None:
            per_token = self.flops_per_token + self.attention_flops_per_context * context
            out["mfu"] = tokens_per_s * per_token / (self.peak_flops * world_size)
        return out


def describe_hardware(device: Any, precision: str, model: Any) -> Hardware:
    """The `Hardware` of a model placed on `device` (a torch.device) for a run in `precision`."""
    import platform

    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or device.type
    peak = peak_flops(name, precision) if device.type == "cuda" else None
    hint = bf16_hint(device.type, precision, cpu_flags())
    return Hardware(
        str(device), name, peak, flops_per_token(model), attention_flops_per_context(model), hint
    )


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them; empty elsewhere."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def bf16_hint(device_type: str, precision: str, flags: set[str]) -> str | None:
    """For an fp32 run on a CPU with AMX-BF16 (Intel Sapphire Rapids and newer): bf16 autocast
    runs the matmuls on the AMX tiles. Measured on the main job: 1.36x the real tokens/s on 1
    process, 1.48x on 2, and the same test accuracy (BENCHMARKS.md, "bf16 on the CPU")."""
    if device_type != "cpu" or precision != "fp32" or "amx_bf16" not in flags:
        return None
    return (
        "this CPU has AMX-BF16: train.precision=bf16 trains about 1.4x faster here "
        "(bf16 autocast matmuls, fp32 weights and AdamW; BENCHMARKS.md)"
    )
