"""Unspaced scripts: word segmentation, BMES/BIOES/IOB1 tags against seqeval, CMRC 2018 scoring,
and QA / relation extraction on Chinese text (all pure or tokenizer-only, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from zh_data import zh_tokenizer  # noqa: F401 (fixture)

from nluft.config import Config, QAConfig
from nluft.metrics import cmrc_exact, cmrc_f1, cmrc_scores, cmrc_segments, squad_scores
from nluft.segmentation import segment
from nluft.tasks import build_task
from nluft.tasks.qa import Window, decode_answer
from nluft.tasks.relation import insert_markers
from nluft.tasks.tag_schemes import entity_spans, from_bio, invalid_transitions, to_seqeval

# --- word segmentation -----------------------------------------------------------------------


def test_auto_segmentation_makes_each_cjk_character_a_word_and_keeps_offsets() -> None:
    text = "我在Peking University读书，2024年。"
    words = segment(text)
    assert [w.text for w in words] == [
        "我", "在", "Peking", "University", "读", "书", "，", "2024", "年", "。",
    ]  # fmt: skip
    assert all(text[w.start : w.end] == w.text for w in words)
    kana = segment("東京タワーへ行く")  # kanji and katakana/hiragana alike
    assert [w.text for w in kana] == list("東京タワーへ行く")
    assert [w.text for w in segment(text, "whitespace")] == [
        "我在Peking",
        "University读书，2024年。",
    ]
    assert [w.text for w in segment("a b 北", "char")] == ["a", "b", "北"]
    assert segment("  ") == []


# --- tag schemes, checked against seqeval ------------------------------------------------------


def test_bmes_is_read_by_seqeval_as_iobes() -> None:
    from seqeval.metrics import classification_report
    from seqeval.metrics.sequence_labeling import get_entities

    from nluft.metrics import entity_scores

    gold = ["B-PER", "M-PER", "E-PER", "O", "S-LOC", "B-ORG", "M-ORG", "M-ORG", "E-ORG"]
    pred = ["B-PER", "M-PER", "E-PER", "O", "S-ORG", "B-ORG", "M-ORG", "M-ORG", "E-ORG"]
    # Hand-written IOBES equivalents, the oracle's input.
    gold_iobes = ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-ORG", "I-ORG", "I-ORG", "E-ORG"]
    pred_iobes = ["B-PER", "I-PER", "E-PER", "O", "S-ORG", "B-ORG", "I-ORG", "I-ORG", "E-ORG"]
    assert to_seqeval(gold, "BMES") == gold_iobes
    assert entity_spans(gold, "BMES") == [("PER", 0, 3), ("LOC", 4, 5), ("ORG", 5, 9)]
    assert get_entities(gold_iobes) == [("PER", 0, 2), ("LOC", 4, 4), ("ORG", 5, 8)]
    task = build_task(ner_cfg("BMES"))
    scores = task.score([pred], [gold])
    # 3 gold entities, 3 predicted, 2 right (PER, ORG): P = R = F1 = 2/3.
    assert scores["f1"] == pytest.approx(2 / 3)
    oracle = classification_report([gold_iobes], [pred_iobes], output_dict=True, zero_division=0)
    assert scores["f1"] == pytest.approx(oracle["micro avg"]["f1-score"])
    assert scores["LOC/recall"] == 0.0 and scores["PER/f1"] == 1.0
    strict = build_task(ner_cfg("BMES", strict=True)).score([pred], [gold])
    assert strict["f1"] == pytest.approx(2 / 3)
    assert entity_scores([gold_iobes], [pred_iobes], "BIOES", strict=True)["f1"] == strict["f1"]


def test_iob1_entities_follow_seqeval() -> None:
    from seqeval.metrics.sequence_labeling import get_entities

    tags = ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]  # B- splits two adjacent PER entities
    assert entity_spans(tags, "IOB1") == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert [(k, s, e + 1) for k, s, e in get_entities(tags)] == entity_spans(tags, "IOB1")


def test_bio_spans_rewritten_in_every_scheme_and_bmes_transitions() -> None:
    bio = ["B-PER", "I-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert from_bio(bio, "BMES") == ["B-PER", "M-PER", "E-PER", "S-PER", "O", "S-LOC"]
    assert from_bio(bio, "BIOES") == ["B-PER", "I-PER", "E-PER", "S-PER", "O", "S-LOC"]
    assert from_bio(bio, "IOB1") == ["I-PER", "I-PER", "I-PER", "B-PER", "O", "I-LOC"]
    assert invalid_transitions(["B-PER", "M-PER", "E-PER", "S-LOC"], "BMES") == []
    problems = invalid_transitions(["O", "M-PER", "B-LOC", "O"], "BMES")
    # M-PER after O opens nothing (1); B-LOC does not close the M-PER it follows (2); the O
    # after B-LOC leaves LOC without its E-LOC (3).
    assert [i for i, _ in problems] == [1, 2, 3]


def ner_cfg(scheme: str, strict: bool = False) -> Config:
    return Config.model_validate(
        {
            "task": "ner",
            "output_dir": "unused",
            "model": {"name_or_path": "unused"},
            "data": {"train_file": "unused"},
            "ner": {"tag_scheme": scheme, "strict": strict},
        }
    )


# --- CMRC 2018 scoring (values worked out by hand from the official script's rules) -----------


def test_cmrc_segmentation_and_single_answers() -> None:
    # Each Chinese character a token; letter/digit runs are words; punctuation removed.
    assert cmrc_segments("《红楼梦》第3.5回，iPhone 12手机") == [
        "红", "楼", "梦", "第", "3.5", "回", "iphone", "12", "手", "机",
    ]  # fmt: skip
    # gold 北京大学 (4 tokens), pred 北京 (2): common run 2 -> P 2/2, R 2/4, F1 2*1*.5/1.5 = 2/3
    assert cmrc_f1("北京大学", "北京") == pytest.approx(2 / 3)
    # gold 清华大学 (4), pred 在清华 (3): common run 清华 = 2 -> P 2/3, R 1/2, F1 = 4/7
    assert cmrc_f1("清华大学", "在清华") == pytest.approx(4 / 7)
    # The longest common *contiguous* run: 上海浦东新区 (6) vs 上海新区 (4) share 上海 (2), not 4
    # tokens -> P 2/4, R 2/6, F1 = 2 * (1/2) * (1/3) / (5/6) = 2/5
    assert cmrc_f1("上海浦东新区", "上海新区") == pytest.approx(2 / 5)
    # Mixed: iphone 12 手 机 (4) vs iphone 12 (2) -> P 1, R 1/2, F1 2/3; EM 0
    assert cmrc_f1("iPhone 12手机", "iphone 12") == pytest.approx(2 / 3)
    assert cmrc_exact("iPhone 12手机", "iphone 12") == 0
    # Punctuation (《》) is removed before comparing: EM 1, F1 1
    assert cmrc_exact("《红楼梦》", "红楼梦") == 1 and cmrc_f1("《红楼梦》", "红楼梦") == 1.0
    # EM keeps inner spaces; "iphone12" is one word, sharing no token with "iphone 12"
    assert cmrc_exact("iPhone 12", "iphone12") == 0 and cmrc_f1("iPhone 12", "iphone12") == 0.0


def test_cmrc_scores_take_the_best_gold_and_differ_from_squad_on_chinese() -> None:
    preds = ["北京", "在清华", "红楼梦", "上海新区", "北大"]
    golds = [["北京大学"], ["清华大学"], ["《红楼梦》"], ["上海浦东新区"], ["北京大学", "北大"]]
    scores = cmrc_scores(preds, golds)
    # EM: only 红楼梦 and 北大 match -> 2/5; F1: 2/3, 4/7, 1, 2/5, 1 (averaged, in percent)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 4 / 7 + 1 + 2 / 5 + 1) / 5)
    # SQuAD splits on whitespace (an unspaced partial answer scores 0, so F1 collapses to EM)
    # and removes only ASCII punctuation (《红楼梦》 != 红楼梦): only 北大 counts, 1/5.
    squad = squad_scores(preds, golds)
    assert squad["f1"] == pytest.approx(squad["exact_match"]) == pytest.approx(100 * 1 / 5)


def test_qa_metric_auto_picks_cmrc_for_chinese_contexts_and_squad_for_english() -> None:
    def task_for(context: str) -> object:
        cfg = Config.model_validate(
            {
                "task": "qa",
                "output_dir": "unused",
                "model": {"name_or_path": "unused"},
                "data": {"train_file": "unused", "max_length": 64},
                "qa": {"doc_stride": 16},
            }
        )
        task = build_task(cfg)
        answer = context[:2]
        row = {"id": "q", "question": "问?", "context": context, "is_impossible": False}
        row["answers"] = {"text": [answer], "answer_start": [0]}
        task.prepare({"train": Dataset.from_list([row])})
        return task

    chinese, english = task_for("北京是中国的首都。"), task_for("Paris is the capital.")
    assert chinese.metric == "cmrc2018" and english.metric == "squad"  # type: ignore[attr-defined]
    assert chinese.score(["北京"], [["北京大学"]])["f1"] == pytest.approx(100 * 2 / 3)  # type: ignore[attr-defined]
    # English keeps the official SQuAD rules (articles and punctuation dropped).
    assert english.score(["the Eiffel Tower."], [["Eiffel Tower"]])["exact_match"] == 100.0  # type: ignore[attr-defined]


# --- QA and relation extraction on Chinese text (character offsets) ---------------------------


def test_qa_encodes_and_decodes_chinese_answers_by_character_offsets(zh_tokenizer: Path) -> None:  # noqa: F811
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(zh_tokenizer))
    cfg = Config.model_validate(
        {
            "task": "qa",
            "output_dir": "unused",
            "model": {"name_or_path": "unused"},
            "data": {"train_file": "unused", "max_length": 24},
            "qa": {"doc_stride": 4},
        }
    )
    task = build_task(cfg)
    context = "张伟在北京工作，李娜在上海的人民银行上班。"
    start = context.index("人民银行")
    examples = {
        "question": ["李娜在哪里上班？"],
        "context": [context],
        "answers": [{"text": ["人民银行"], "answer_start": [start]}],
    }
    features = task.encode(examples, tokenizer)
    found = []
    for ids, label, offsets in zip(
        features["input_ids"], features["labels"], features["offset_mapping"], strict=True
    ):
        if label[0] != features["cls_index"][0]:
            found.append(context[offsets[label[0]][0] : offsets[label[1]][1]])
            logits = np.full((len(ids), 2), -5.0)
            logits[label[0], 0] = logits[label[1], 1] = 5.0
            window = Window(logits, [tuple(o) for o in offsets], 0)
            assert decode_answer(context, [window], QAConfig(doc_stride=4)) == "人民银行"
    assert found and set(found) == {"人民银行"}  # windowed, and the span is exact in each window


def test_relation_markers_wrap_chinese_spans(zh_tokenizer: Path) -> None:  # noqa: F811
    text = "张伟是华为公司的员工。"
    subject = {"start": 0, "end": 2, "type": "PER"}
    obj = {"start": 3, "end": 7, "type": "ORG"}
    marked = insert_markers(text, subject, obj, {})
    assert marked == "[E1] 张伟 [/E1]是[E2] 华为公司 [/E2]的员工。"
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(zh_tokenizer))
    tokenizer.add_tokens(["[E1]", "[/E1]", "[E2]", "[/E2]"], special_tokens=True)
    tokens = tokenizer.tokenize(marked)
    assert tokens[:4] == ["[E1]", "张", "伟", "[/E1]"] and "[UNK]" not in tokens
