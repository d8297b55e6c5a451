"""Chinese fixtures written for these tests: templated sentences with entity spans, and a tiny
WordPiece tokenizer (and random BERT) built from their characters. No third-party text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

PEOPLE = ["张伟", "李娜", "王芳", "刘洋", "陈静", "赵磊"]
PLACES = ["北京", "上海", "广州", "杭州", "南京", "成都"]
ORGS = ["人民银行", "华为公司", "清华大学", "中国移动"]
TEMPLATES = [
    "{PER}在{LOC}工作。",
    "{PER}去了{LOC}。",
    "{PER}是{ORG}的员工。",
    "昨天{PER}在{LOC}见到了朋友。",
    "{ORG}的总部在{LOC}。",
    "{PER}用iPhone给{ORG}打电话。",
]
EXTRA = "问哪里上班的员工李娜张伟在是，？"
# Characters the tiny tokenizer leaves out, so that it reads them as [UNK] (the place names):
# model.extend_vocab_from_data must add them.
LEFT_OUT = set("".join(PLACES)) - set("".join(PEOPLE + ORGS) + EXTRA)


def zh_sentence(rng: random.Random) -> tuple[str, list[dict[str, object]]]:
    """One sentence and its entities as character spans `{start, end, type}`."""
    template = rng.choice(TEMPLATES)
    text, entities = "", []
    pieces = template.replace("{", "|{").replace("}", "}|").split("|")
    for piece in pieces:
        if piece.startswith("{"):
            kind = piece[1:-1]
            name = rng.choice({"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}[kind])
            entities.append({"start": len(text), "end": len(text) + len(name), "type": kind})
            text += name
        else:
            text += piece
    return text, entities


def zh_rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [dict(zip(("text", "entities"), zh_sentence(rng), strict=True)) for _ in range(n)]


def zh_characters() -> list[str]:
    chars = set(
        "".join(t.replace("{PER}", "").replace("{LOC}", "").replace("{ORG}", "") for t in TEMPLATES)
    )
    chars |= set("".join(PEOPLE + PLACES + ORGS) + EXTRA)
    return sorted(c for c in chars if not c.isascii())


def build_zh_tokenizer(out: Path, leave_out: set[str] = frozenset()) -> Path:  # type: ignore[assignment]
    """A BERT WordPiece tokenizer whose vocabulary is our characters plus a few Latin pieces."""
    import transformers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    latin = ["iphone", "peking", "university", *"abcdefghijklmnopqrstuvwxyz0123456789.,?!"]
    latin += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = specials + [c for c in zh_characters() if c not in leave_out] + latin
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def zh_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Chinese tokenizer with every fixture character."""
    return build_zh_tokenizer(tmp_path_factory.mktemp("zh-tokenizer"))


@pytest.fixture(scope="session")
def zh_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT whose tokenizer lacks the place-name characters."""
    import torch
    import transformers

    out = build_zh_tokenizer(tmp_path_factory.mktemp("zh-bert"), LEFT_OUT)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(out), safe_serialization=True)
    return out
