"""The typed config schema: one section class per YAML section, `Config` for the whole run.

No torch here: `nluft train --dry-run` and config errors stay fast.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

STRATEGY_NAMES = ("single", "ddp", "deepspeed", "fsdp")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    name_or_path: str = Field(min_length=1)
    revision: str | None = None
    tokenizer_name_or_path: str | None = None
    trust_remote_code: bool = False
    # Add the training data's characters that the tokenizer maps to [UNK] as new tokens (new
    # embedding rows, saved with the export); for Chinese text on a mostly-English vocabulary.
    extend_vocab_from_data: bool = False
    # Load the backbone in this dtype (bfloat16: half the host memory while loading); trainable
    # parameters (adapters, head) are always kept in fp32. None = the checkpoint's own fp32.
    torch_dtype: Literal["float32", "bfloat16"] | None = None
    # Recompute activations in the backward pass instead of storing them (less memory, ~30% slower).
    gradient_checkpointing: bool = False
    # Attention kernel, passed to transformers' from_pretrained; None: transformers' default
    # (sdpa where the architecture has it). flash_attention_2 needs a CUDA GPU and flash-attn.
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] | None = None


class PeftConfig(Section):
    """Parameter-efficient fine-tuning through the `peft` library; the task head stays trained."""

    method: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, le=4096)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # None: nluft's default for the architecture (models/peft.py DEFAULT_TARGETS).
    target_modules: list[str] | Literal["all-linear"] | None = None
    # Trained in full besides the task head (which is always trained), e.g. [LayerNorm].
    modules_to_save: list[str] = Field(default_factory=list)
    # Any other `peft.LoraConfig` argument, passed through (use_rslora, use_dora, ...).
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Section):
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    file_format: Literal[
        "auto",
        "csv",
        "tsv",
        "json",
        "jsonl",
        "parquet",
        "conll",
        "squad",
        "spans",
        "doccano",
        "label_studio",
        "brat",
    ] = "auto"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    max_length: int = Field(128, ge=8, le=32768)
    validation_split_percentage: float = Field(10.0, ge=0, lt=50)
    test_split_percentage: float = Field(10.0, ge=0, lt=50)
    split_seed: int = 42
    group_by_length: bool = True
    # Padding-free batches: each micro-batch's sequences run as one packed row with attention
    # kept inside each sequence (nluft/models/packing.py); same loss and metrics as padded.
    packing: bool = False
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    cache_dir: str = ".cache/nluft"
    # Pad each training batch to a multiple of this many tokens (tensor-core friendly shapes,
    # fewer distinct shapes for torch.compile); None: to its longest sequence.
    pad_to_multiple_of: int | None = Field(None, ge=1, le=4096)


class TrainConfig(Section):
    learning_rate: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, ge=-1)
    per_device_train_batch_size: int = Field(16, ge=1)
    per_device_eval_batch_size: int = Field(64, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: int = 42
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"
    eval_steps: int = Field(500, ge=1)
    save_steps: int = Field(0, ge=0)
    save_total_limit: int = Field(2, ge=1)
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    load_best_model_at_end: bool = True
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_threshold: float = Field(0.0, ge=0)
    logging_steps: int = Field(10, ge=1)
    max_bad_steps: int = Field(3, ge=1)  # NaN/Inf steps in a row before the run stops
    # torch.compile the model (single and ddp), with dynamic shapes: length-grouped batches
    # reuse one graph instead of compiling one per length. Compile time is logged on its own
    # and left out of throughput. The backend: inductor (generated kernels), or aot_eager /
    # eager (no code generation: to check a model captures, and in tests).
    torch_compile: bool = False
    torch_compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"

    @field_validator("eval_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false; the Hugging Face spelling is the string "no".
        return "no" if value is False else value


class StrategyConfig(Section):
    name: str = "single"
    # Seconds before a rank that died or stopped answering fails the job. It bounds: torchrun's
    # rendezvous (`nluft launch` passes it as join_timeout), process-group setup, and every
    # collective: DDP and FSDP (a 1-D mesh reuses it) run on the default group, DeepSpeed ZeRO on
    # a clone that nluft makes with this timeout (DeepSpeed's own would wait torch's 30 min).
    # The rank that gives up names the silent rank (distributed/heartbeat.py).
    timeout_s: float = Field(600.0, gt=0)
    # ddp: set when some parameters get no gradient in a step (costs a graph walk per step).
    find_unused_parameters: bool = False
    # deepspeed only (None = not set, so setting one under another strategy is an error)
    zero_stage: int | None = Field(None, ge=0, le=3)
    offload_optimizer: bool | None = None
    offload_params: bool | None = None
    deepspeed_config: str | None = None
    # ZeRO-3 (default on): build with placeholders, each rank reads only its partitions.
    zero3_lazy_init: bool | None = None
    # fsdp only
    fsdp_cpu_offload: bool | None = None
    fsdp_reshard_after_forward: bool | None = None
    # Meta-device initialisation (default on): each rank reads only its shard of the weights.
    fsdp_meta_init: bool | None = None

    @model_validator(mode="after")
    def _check_backend_keys(self) -> StrategyConfig:
        owners = {"deepspeed": DEEPSPEED_KEYS, "fsdp": FSDP_KEYS}
        for owner, keys in owners.items():
            for key in keys:
                if getattr(self, key) is not None and self.name != owner:
                    raise ValueError(
                        f"strategy.{key}: applies only to strategy.name={owner}, "
                        f"not {self.name!r}; remove it or switch strategy"
                    )
        if self.offload_params and (self.zero_stage if self.zero_stage is not None else 2) != 3:
            raise ValueError(
                "strategy.offload_params: parameter offload needs strategy.zero_stage=3"
            )
        return self


DEEPSPEED_KEYS = (
    "zero_stage",
    "offload_optimizer",
    "offload_params",
    "deepspeed_config",
    "zero3_lazy_init",
)
FSDP_KEYS = ("fsdp_cpu_offload", "fsdp_reshard_after_forward", "fsdp_meta_init")


class ClassificationConfig(Section):
    multi_label: bool = False
    threshold: float = Field(0.5, gt=0, lt=1)
    class_weights: list[float] | Literal["balanced"] | None = None


class NerConfig(Section):
    """Token classification: tag scheme, columns, sub-token labels, windows, seqeval mode."""

    tag_scheme: Literal["BIO", "IOB1", "BIOES", "BMES"] = "BIO"
    # Words of raw text (predict --text, JSONL text, span exports): auto = each CJK character a
    # word, other runs split on whitespace; whitespace; char = every non-space character.
    word_segmentation: Literal["auto", "whitespace", "char"] = "auto"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    tag_column: int = -1  # CoNLL: which whitespace-separated column holds the tag (-1 = last)
    label_all_subtokens: bool = False  # every sub-token labelled (B- turned into I-)
    strict: bool = False  # seqeval strict mode: entities must follow the scheme exactly
    stride: int = Field(16, ge=0)  # sub-tokens shared by consecutive windows of long sentences


class QAConfig(Section):
    """Extractive QA: sliding windows over long contexts and answer decoding (as HF run_qa)."""

    doc_stride: int = Field(128, ge=1)
    max_answer_length: int = Field(30, ge=1)
    n_best_size: int = Field(20, ge=1)
    null_score_diff_threshold: float = 0.0
    version_2_with_negative: bool = False
    # squad: official SQuAD EM/F1; cmrc2018: CMRC 2018's (per-character F1 for Chinese);
    # auto: cmrc2018 when most context characters are CJK.
    metric: Literal["auto", "squad", "cmrc2018"] = "auto"


class RelationConfig(Section):
    """Relation extraction: the label scored as "no relation" and how entities are marked."""

    negative_label: str | None = "no_relation"
    typed_markers: bool = True


class AugmentConfig(Section):
    """Extra training texts for distillation (`distill.augment`, classification only): each
    training text also appears as `copies` word-level variants (TinyBERT-/Tang et al.-style
    masking, dropout and swaps; no MLM), labelled by the teacher's soft targets (and the
    original's gold label, weighted by alpha). Off while `copies` is 0. See nluft/data/augment.py.
    """

    copies: int = Field(0, ge=0, le=64)  # variants of each training text
    mask_prob: float = Field(0.1, ge=0, le=1)  # each word -> the tokenizer's mask token
    drop_prob: float = Field(0.1, ge=0, le=1)  # each word left out
    swap_prob: float = Field(0.1, ge=0, le=1)  # each word swapped with its right neighbour
    seed: int = 0


class DistillConfig(Section):
    """Knowledge distillation from a finished run (`nluft distill CONFIG teacher=RUN_DIR`).

    Loss: alpha * task loss + (1 - alpha) * T^2 * KL(teacher at T || student at T)
    [+ hidden_weight * MSE of hidden states]. Off while `teacher` is unset.
    """

    teacher: str | None = None  # the teacher's run directory (its export/ is used)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the task loss on the gold labels
    temperature: float = Field(2.0, gt=0)
    cache: bool = True  # teacher logits computed once, cached under data.cache_dir; else online
    # Student initialised from the teacher keeping these encoder layers (0-based), or every k-th
    # one (layers 0, k, 2k, ...), as DistilBERT was built; unset: model.name_or_path is the
    # student (it must share the teacher's tokenizer).
    student_layers: list[int] | None = None
    keep_every: int | None = Field(None, ge=1)
    hidden_weight: float = Field(0.0, ge=0)  # weight of the hidden-state MSE (needs cache: false)
    layer_map: list[int] | None = None  # teacher layer (1-based) matched by each student layer
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.student_layers is not None and self.keep_every is not None:
            raise ValueError("distill: set only one of distill.student_layers and keep_every")
        if self.student_layers is not None and (
            not self.student_layers
            or min(self.student_layers) < 0
            or sorted(set(self.student_layers)) != self.student_layers
        ):
            raise ValueError(
                "distill.student_layers: a non-empty increasing list of teacher layer indices "
                f"from 0, got {self.student_layers}"
            )
        if self.hidden_weight > 0 and self.cache:
            raise ValueError(
                "distill.hidden_weight: hidden-state matching runs the teacher online; "
                "set distill.cache=false"
            )
        used = (self.student_layers, self.keep_every, self.layer_map)
        augmented = self.augment.copies > 0
        if self.teacher is None and (
            any(v is not None for v in used) or self.hidden_weight or augmented
        ):
            raise ValueError("distill: distillation settings need distill.teacher=RUN_DIR")
        return self


class WandbConfig(Section):
    """Weights & Biases; only rank 0 starts a run, and its id lives in RUN_DIR/wandb_run_id."""

    enabled: bool = False
    project: str = Field("nluft", min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$")
    entity: str | None = None
    group: str | None = Field(None, max_length=128)
    tags: list[str] = Field(default_factory=list, max_length=64)
    name: str | None = None
    # online falls back to offline when no API key is found; nothing ever waits for a prompt.
    mode: Literal["online", "offline", "disabled"] = "online"
    log_model: bool = False


class TrackingConfig(Section):
    progress_bar: bool = True
    wandb: WandbConfig = WandbConfig()


class ParamSpec(Section):
    """One searched key: a finite `choice`, or a `uniform`, `loguniform` or `int` range."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [k for k in SEARCH_KINDS if self.values_of(k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a searched key takes exactly one of {', '.join(SEARCH_KINDS)} "
                f"(got {', '.join(kinds) or 'none'})"
            )
        low, high = self.values_of(kinds[0]) if kinds[0] != "choice" else (0, 0)
        if low > high or (kinds[0] == "loguniform" and low <= 0):
            raise ValueError(f"{kinds[0]} range [{low}, {high}] is empty or not positive")
        return self

    def values_of(self, kind: str) -> Any:
        return getattr(self, "integer" if kind == "int" else kind)

    @property
    def kind(self) -> str:
        return next(k for k in SEARCH_KINDS if self.values_of(k) is not None)


SEARCH_KINDS = ("choice", "uniform", "loguniform", "int")


class SearchConfig(Section):
    """`nluft search`: the space (any config key), the method, the budget and the pruner."""

    space: dict[str, ParamSpec] = Field(min_length=1)
    method: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int | None = Field(None, ge=1)  # grid: default (and at most) the grid's size
    metric: str | None = None  # default: train.metric_for_best_model or the task's metric
    direction: Literal["maximize", "minimize"] | None = None  # default: from the metric
    pruner: Literal["none", "median", "hyperband"] = "none"
    pruner_startup_trials: int = Field(2, ge=0)  # median: trials finished before any pruning
    pruner_warmup_steps: int = Field(0, ge=0)  # median: steps before a trial can be pruned
    startup_trials: int = Field(10, ge=1)  # tpe: random trials before the model takes over
    seed: int = 0
    grace_s: float = Field(60.0, gt=0)  # a trial whose worker is silent this long is retried
    max_retries: int = Field(3, ge=0)  # retries of one trial after its worker stopped or died


class Config(Section):
    task: str
    output_dir: str = Field(min_length=1)
    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = StrategyConfig()
    tracking: TrackingConfig = TrackingConfig()
    classification: ClassificationConfig = ClassificationConfig()
    ner: NerConfig = NerConfig()
    qa: QAConfig = QAConfig()
    relation: RelationConfig = RelationConfig()
    peft: PeftConfig | None = None
    search: SearchConfig | None = None  # read by `nluft search`; `nluft train` ignores it
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        data = self.data
        if not (data.train_file or data.dataset_name):
            raise ValueError("set data.train_file or data.dataset_name")
        if data.train_file and data.dataset_name:
            raise ValueError("set only one of data.train_file and data.dataset_name")
        if self.task == "ner" and self.ner.stride > data.max_length // 2:
            raise ValueError(
                f"ner.stride ({self.ner.stride}) must be at most half of data.max_length "
                f"({data.max_length}) so that windows advance; lower ner.stride"
            )
        if self.model.torch_dtype == "bfloat16" and self.train.precision != "bf16":
            raise ValueError(
                "model.torch_dtype: bfloat16 weights compute in bf16; set train.precision=bf16 "
                "(trainable parameters stay fp32)"
            )
        if self.strategy.name not in STRATEGY_NAMES:
            raise ValueError(
                f"strategy.name: unknown strategy {self.strategy.name!r}; "
                f"choose one of {', '.join(STRATEGY_NAMES)}"
            )
        check_train_combinations(self)
        return self


def check_train_combinations(cfg: Config) -> None:
    """Combinations the schema accepts but no run can honour: refused before anything runs."""
    train = cfg.train
    if cfg.strategy.name == "fsdp" and train.precision == "fp16":
        raise ValueError(
            "train.precision: fp16 with strategy.name=fsdp needs a sharded loss scaler that nluft "
            "does not provide; use bf16 (no loss scaling needed) or strategy.name=deepspeed"
        )
    if cfg.peft is not None and cfg.model.extend_vocab_from_data:
        raise ValueError(
            "model.extend_vocab_from_data: the added tokens' embedding rows would stay frozen "
            "under peft (LoRA trains adapters only); drop the peft section or the extension"
        )
    if train.torch_compile and cfg.strategy.name not in ("single", "ddp"):
        raise ValueError(
            f"train.torch_compile: supported with strategy.name single or ddp, not "
            f"{cfg.strategy.name!r} (its engine wraps the model itself); set "
            "train.torch_compile=false"
        )
    if train.early_stopping_patience and train.eval_strategy == "no":
        raise ValueError(
            "train.early_stopping_patience: needs evaluations, but train.eval_strategy is 'no'; "
            "set train.eval_strategy to steps or epoch"
        )
