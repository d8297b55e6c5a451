"""NER: CoNLL reading, bad input, sub-token labels, windows, seqeval scores, the CLI end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import nluft

from nluft.config import load_config
from nluft.data import build_data
from nluft.data.conll import read_conll
from nluft.errors import NluftError
from nluft.metrics import entity_scores
from nluft.models import build_tokenizer
from nluft.tasks import build_task
from nluft.tasks.ner import word_windows
from nluft.tasks.tag_schemes import invalid_transitions

PEOPLE = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farid"]
PLACES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo"]
VERBS = ["visited", "left", "likes", "called", "remembers"]


def tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences we write here: a person (sometimes two words), a verb, a place, filler."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(rng.choice(PEOPLE), "B-PER")]
        if rng.random() < 0.5:
            words.append(("Smith", "I-PER"))
        words += [(rng.choice(VERBS), "O"), (rng.choice(PLACES), "B-LOC")]
        words += [*[("on", "O"), ("monday", "O")][: rng.randint(0, 2)], (".", "O")]
        out.append(words)
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], sep: str = " ") -> Path:
    """CoNLL-2003 layout: a -DOCSTART- line, four columns, a blank line after each sentence."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [sep.join([word, "NNP", "B-NP", tag]) for word, tag in sentence] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def ner_config(tmp_path: Path, model_dir: Path, data: dict, **sections: dict) -> Path:
    cfg = {
        "task": "ner",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "data": {"cache_dir": str(tmp_path / "cache"), "max_length": 32, **data},
        "ner": {"stride": 4},
        "tracking": {"progress_bar": False},
        **sections,
    }
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(tmp_path: Path, model_dir: Path, data: dict, overrides: tuple[str, ...] = ()):
    cfg = load_config(ner_config(tmp_path, model_dir, data), list(overrides))
    task = build_task(cfg)
    tokenizer = build_tokenizer(cfg.model, task)
    return build_data(cfg, task, tokenizer, True, lambda: None), task, tokenizer


# --- reading CoNLL -----------------------------------------------------------------------------


def test_conll_reader_handles_docstart_tabs_spaces_and_tag_column(tmp_path: Path) -> None:
    path = tmp_path / "mixed.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
        "-DOCSTART-\tO\n\nPeter\tNNP\tB-NP\tB-PER\nBlackburn\tNNP\tI-NP\tI-PER\n\n\n",
        encoding="utf-8",
    )
    cfg = load_config(ner_config(tmp_path, tmp_path, {"train_file": str(path)}))
    data = read_conll(str(path), cfg.ner)
    assert data["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert data["tags"] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert data["_line"] == [3, 8]  # the first token line of each sentence
    chunks = read_conll(str(path), cfg.ner.model_copy(update={"tag_column": 2}))
    assert chunks["tags"] == [["B-NP", "B-VP"], ["B-NP", "I-NP"]]


def test_malformed_conll_line_names_file_and_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("Alice B-PER\nvisited O\nParis\n\nBob B-PER\n", encoding="utf-8")
    with pytest.raises(NluftError) as err:
        load(tmp_path, tiny_model_dir, {"train_file": str(path)})
    message = str(err.value)
    assert message.startswith(f"{path}:3: expected 'TOKEN ... TAG'") and "\n" not in message


def test_unknown_tag_names_file_and_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = write_conll(tmp_path / "train.conll", tagged_sentences(20, seed=1))
    dev = tagged_sentences(4, seed=2)
    dev[2][-1] = (".", "B-FOOD")  # a type the training data never has
    dev_path = write_conll(tmp_path / "dev.conll", dev)
    line = 2 + sum(len(s) + 1 for s in dev[:2]) + len(dev[2])
    with pytest.raises(NluftError) as err:
        load(tmp_path, tiny_model_dir, {"train_file": str(train), "validation_file": str(dev_path)})
    assert str(err.value).startswith(f"{dev_path}:{line}: tag 'B-FOOD' is not in the label set")
    # A tag that is not BIO at all is caught in the training file too, at its exact line.
    bad = tagged_sentences(3, seed=3)
    bad[1][0] = (bad[1][0][0], "PER")
    bad_path = write_conll(tmp_path / "bad.conll", bad)
    with pytest.raises(
        NluftError, match=rf"{bad_path}:{3 + len(bad[0]) + 1}: tag 'PER' is not a BIO"
    ):
        load(tmp_path, tiny_model_dir, {"train_file": str(bad_path), "test_split_percentage": 0})


def test_jsonl_tokens_and_tags_load_through_the_usual_loader(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rows = [
        {"tokens": [w for w, _ in s], "tags": [t for _, t in s]} for s in tagged_sentences(30, 4)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data, task, _ = load(tmp_path, tiny_model_dir, {"train_file": str(path)})
    assert task.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert sum(len(d) for d in data.examples.values()) == 30


# --- labels on sub-tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("all_subtokens", [False, True])
def test_labels_sit_on_first_subtoken_or_on_all(
    tmp_path: Path, tiny_model_dir: Path, all_subtokens: bool
) -> None:
    train = write_conll(
        tmp_path / "train.conll", [[("Wonderfulness", "B-PER"), ("Smith", "I-PER"), ("x", "O")]] * 3
    )
    _, task, tokenizer = load(
        tmp_path,
        tiny_model_dir,
        {"train_file": str(train), "validation_split_percentage": 0, "test_split_percentage": 0},
        (f"ner.label_all_subtokens={str(all_subtokens).lower()}",),
    )
    out = task.encode(
        {"tokens": [["Wonderfulness", "Smith", "x"]], "tags": [["B-PER", "I-PER", "O"]]}, tokenizer
    )
    pieces = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert pieces == ["[CLS]", "wonderful", "##ness", "smith", "x", "[SEP]"]
    names = [task.label_names[i] if i >= 0 else None for i in out["labels"][0]]
    second = "I-PER" if all_subtokens else None  # B- becomes I- on later sub-tokens
    assert names == [None, "B-PER", second, "I-PER", "O", None]
    assert out["word_index"][0] == [-1, 0, -1, 1, 2, -1]


# --- windows -----------------------------------------------------------------------------------


def test_word_windows_cover_every_word_within_budget() -> None:
    sizes = [1, 2, 1, 3, 1, 1, 2, 1, 1, 9, 1]
    windows = word_windows(sizes, budget=6, stride=2)
    covered = {w for start, end in windows for w in range(start, end)}
    assert covered == set(range(len(sizes)))
    for start, end in windows:
        assert sum(sizes[start:end]) <= 6 or end - start == 1  # one over-long word alone
    # Consecutive windows share up to 2 sub-tokens; the 9-sub-token word sits alone (truncated).
    assert windows == [(0, 3), (2, 6), (4, 9), (9, 10), (10, 11)]


def test_long_sentence_is_windowed_and_every_word_predicted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    words = [(PEOPLE[i % 6], "B-PER") if i % 3 == 0 else ("the", "O") for i in range(70)]
    train = write_conll(tmp_path / "train.conll", [words, *tagged_sentences(5, 6)])
    data, task, _ = load(
        tmp_path,
        tiny_model_dir,
        {"train_file": str(train), "validation_split_percentage": 0, "test_split_percentage": 0},
        ("data.max_length=16", "ner.stride=4"),
    )
    features, examples = data.features["train"], data.examples["train"]
    long_row = next(i for i, t in enumerate(examples["tokens"]) if len(t) == 70)
    windows = [f for f in range(len(features)) if features["example_id"][f] == long_row]
    assert len(windows) >= 5 and max(features["length"]) <= 16
    # Logits that are right everywhere except at a window's inner edges, where context is short:
    # the merge must take each word from the window where it sits most centrally.
    logits = []
    for f in range(len(features)):
        index = features["word_index"][f]
        present = [w for w in index if w >= 0]
        gold = examples["tags"][features["example_id"][f]]
        rows = np.zeros((len(index), len(task.label_names)))
        for pos, w in enumerate(index):
            if w >= 0:
                at_inner_edge = (w == present[0] and w > 0) or (
                    w == present[-1] and w < len(gold) - 1
                )
                tag = "B-LOC" if at_inner_edge else gold[w]
                rows[pos, task.label_names.index(tag)] = 5.0
        logits.append(rows)
    predictions = task.predict(logits, features, examples)
    assert [len(p) for p in predictions] == [len(t) for t in examples["tokens"]]
    assert predictions == examples["tags"]


# --- scores ------------------------------------------------------------------------------------


def test_entity_scores_match_hand_computed_values() -> None:
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "B-LOC", "B-ORG"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["B-PER", "O", "B-ORG", "B-ORG"]]
    s = entity_scores(refs, preds)
    # Gold: PER PER LOC LOC ORG (5); predicted: PER PER ORG ORG (4); correct: PER PER ORG (3).
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert s["PER/f1"] == 1.0 and s["LOC/f1"] == 0.0 and s["LOC/support"] == 2
    assert s["ORG/precision"] == 0.5 and s["ORG/recall"] == 1.0
    assert s["ORG/f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert s["accuracy"] == pytest.approx(6 / 8)
    # The missed LOC at the very end of the first sentence counts (no entity is lost at the end).
    assert entity_scores([["O", "B-LOC"]], [["O", "O"]])["recall"] == 0.0


def test_strict_mode_rejects_an_entity_without_its_b_tag() -> None:
    refs, preds = [["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]]
    assert entity_scores(refs, preds)["f1"] == 1.0  # conlleval reading: I- after O starts one
    strict = entity_scores(refs, preds, strict=True)
    assert strict["f1"] == 0.0 and strict["recall"] == 0.0
    bioes = entity_scores(
        [["B-LOC", "E-LOC", "S-PER"]], [["B-LOC", "E-LOC", "S-PER"]], "BIOES", True
    )
    assert bioes["f1"] == 1.0 and bioes["LOC/support"] == 1 and bioes["PER/support"] == 1


def test_scores_do_not_depend_on_example_order() -> None:
    rng = random.Random(0)
    refs = [[t for _, t in s] for s in tagged_sentences(40, 9)]
    preds = [[rng.choice(["O", t]) for t in r] for r in refs]
    order = list(range(40))
    rng.shuffle(order)
    shuffled = entity_scores([refs[i] for i in order], [preds[i] for i in order])
    assert shuffled == entity_scores(refs, preds)


def test_invalid_transitions_per_scheme() -> None:
    assert [i for i, _ in invalid_transitions(["O", "I-PER", "I-PER"], "BIO")] == [1]
    assert invalid_transitions(["O", "I-PER", "I-PER"], "IOB1") == []
    assert [i for i, _ in invalid_transitions(["O", "B-PER"], "IOB1")] == [1]
    assert [i for i, _ in invalid_transitions(["B-PER", "O", "E-PER"], "BIOES")] == [1, 2]
    assert [i for i, _ in invalid_transitions(["S-PER", "B-LOC"], "BIOES")] == [1]  # never closed


# --- the CLI end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ner(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ner-e2e")
    files = {}
    for split, n, seed in (("train", 120, 1), ("validation", 20, 2), ("test", 30, 3)):
        sentences = tagged_sentences(n, seed)
        sentences.append(sentences[0] + sentences[1] + sentences[2])  # longer than max_length
        files[split] = write_conll(tmp / f"{split}.conll", sentences, "\t" if seed == 2 else " ")
    config = ner_config(
        tmp,
        tiny_model_dir,
        {f"{s}_file": str(p) for s, p in files.items()} | {"max_length": 11},
        train={
            "learning_rate": 5e-3,
            "num_train_epochs": 3,
            "eval_strategy": "no",
            "per_device_train_batch_size": 16,
            "logging_steps": 10,
            "seed": 3,
        },
    )
    proc = nluft("train", str(config), check=True, timeout=600)
    assert "split into overlapping windows" in proc.stderr  # max_length 11 windows long ones
    return tmp / "run"


def test_ner_trains_and_eval_reproduces_the_final_metrics(trained_ner: Path) -> None:
    saved = json.loads((trained_ner / "results" / "test.json").read_text())
    assert saved["f1"] >= 0.8, saved
    assert {"precision", "recall", "PER/f1", "LOC/f1", "LOC/support"} <= set(saved)
    plan = json.loads((trained_ner / "plan.json").read_text())
    assert plan["num_windowed"]["train"] > 0
    metrics = json.loads(nluft("eval", str(trained_ner), "--json", check=True).stdout)
    for key in ("f1", "precision", "recall", "PER/f1", "LOC/f1"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-9), key
    assert metrics["loss"] == pytest.approx(saved["loss"], rel=1e-5)


def test_ner_predict_gives_tags_and_entities(trained_ner: Path) -> None:
    proc = nluft("predict", str(trained_ner), "--text", "Carol Smith visited Tokyo .", check=True)
    row = json.loads(proc.stdout)
    assert row["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    # From raw text, entities carry character offsets, their text and their word range.
    assert row["entities"] == [
        {"type": "PER", "text": "Carol Smith", "start": 0, "end": 11, "words": [0, 2]},
        {"type": "LOC", "text": "Tokyo", "start": 20, "end": 25, "words": [3, 4]},
    ]
