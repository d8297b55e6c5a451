"""Byte-level BPE models: a decoder LLM (GPT-2 layout) with a classification head, RoBERTa for NER.

Tokenizers are trained here on the test sentences with the `tokenizers` library and the models are
random-init, so nothing is downloaded; the code paths are the ones a hub GPT-2/Llama/RoBERTa takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import nluft, sentiment_rows, write_jsonl
from test_ner import ner_config, tagged_sentences, write_conll

BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def bpe_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vocab.json + merges.txt of a small byte-level BPE trained on the tests' own sentences."""
    from tokenizers import ByteLevelBPETokenizer

    texts = [row["text"] for row in sentiment_rows(300)]
    texts += [" ".join(word for word, _ in s) for s in tagged_sentences(300, 0)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, special_tokens=BPE_SPECIALS, show_progress=False)
    out = tmp_path_factory.mktemp("bpe")
    bpe.save_model(str(out))
    return out


def save_random_model(out: Path, model_class: Any, config: Any, tokenizer: Any) -> Path:
    import torch

    torch.manual_seed(0)
    model_class(config).save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, bpe_vocab: Path) -> Path:
    """A 2-layer GPT-2 with no pad token (as on the hub): nluft pads with end-of-text."""
    import transformers

    files = {"vocab": str(bpe_vocab / "vocab.json"), "merges": str(bpe_vocab / "merges.txt")}
    tokenizer = transformers.GPT2TokenizerFast(**files)
    assert tokenizer.pad_token is None
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2
    )
    out = tmp_path_factory.mktemp("tiny-gpt2")
    return save_random_model(out, transformers.GPT2Model, config, tokenizer)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory, bpe_vocab: Path) -> Path:
    """A 2-layer RoBERTa: byte-level BPE with <s> </s> around every sequence."""
    import transformers

    tokenizer = transformers.RobertaTokenizerFast(
        vocab=str(bpe_vocab / "vocab.json"), merges=str(bpe_vocab / "merges.txt")
    )
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=70,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-roberta")
    return save_random_model(out, transformers.RobertaModel, config, tokenizer)


def test_decoder_classifier_learns_and_padding_leaves_predictions_alone(
    tiny_config: Path, tiny_gpt2: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "gpt2"
    nluft(
        "train",
        str(tiny_config),
        f"model.name_or_path={tiny_gpt2}",
        f"output_dir={run_dir}",
        check=True,
        timeout=600,
    )
    saved = json.loads((run_dir / "results" / "test.json").read_text())
    assert saved["accuracy"] >= 0.9, saved
    # The head reads the last real token: a short review batched with a long one (right padding
    # with end-of-text as pad) must score as it does alone.
    short = "the plot was dull"
    long = "the film was wonderful and charming film movie story cast script ending plot"
    batch = write_jsonl(tmp_path / "in.jsonl", [{"text": short}, {"text": long}])
    together = nluft("predict", str(run_dir), "--input", str(batch), check=True).stdout
    alone = nluft("predict", str(run_dir), "--text", short, check=True).stdout
    first, second = (json.loads(line) for line in together.splitlines())
    assert first["scores"] == pytest.approx(json.loads(alone)["scores"], abs=1e-5)
    assert (first["label"], second["label"]) == ("negative", "positive")


def test_byte_level_ner_encodes_every_word_with_a_prefix_space(
    tiny_roberta: Path, tmp_path: Path
) -> None:
    from nluft.config import load_config
    from nluft.models import build_tokenizer
    from nluft.tasks import build_task

    files = {
        split: write_conll(tmp_path / f"{split}.conll", tagged_sentences(n, seed))
        for split, n, seed in (("train", 160, 1), ("validation", 20, 2), ("test", 40, 3))
    }
    config = ner_config(
        tmp_path,
        tiny_roberta,
        {f"{s}_file": str(p) for s, p in files.items()},
        train={
            "learning_rate": 5e-3,
            "num_train_epochs": 4,
            "eval_strategy": "no",
            "per_device_train_batch_size": 16,
            "seed": 3,
        },
    )
    cfg = load_config(config, [])
    tokenizer = build_tokenizer(cfg.model, build_task(cfg))
    # Without the prefix space a sentence's first word would be encoded unlike the same word later.
    ids = tokenizer(["Paris", "visited", "Paris"], is_split_into_words=True)["input_ids"]
    words = tokenizer(["Paris", "visited", "Paris"], is_split_into_words=True).word_ids()
    first = [i for i, w in zip(ids, words, strict=True) if w == 0]
    last = [i for i, w in zip(ids, words, strict=True) if w == 2]
    assert first == last
    nluft("train", str(config), check=True, timeout=600)
    saved = json.loads((tmp_path / "run" / "results" / "test.json").read_text())
    assert saved["f1"] >= 0.8, saved
    proc = nluft("predict", str(tmp_path / "run"), "--text", "Carol visited Tokyo .", check=True)
    row = json.loads(proc.stdout)
    assert row["tags"] == ["B-PER", "O", "B-LOC", "O"]
