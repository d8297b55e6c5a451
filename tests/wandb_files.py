"""Offline W&B run files read back with wandb's own protobuf schema (`Record`).

wandb 0.31 ships no Python reader for the `.wandb` transaction log any more (the `datastore`
module and `wandb sync --view` are gone; wandb-core reads it in Go), so this reads the log's
framing itself: a 7-byte header, then 32 KiB blocks of CRC-checked chunks (the leveldb log format).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def read_segments(run_dir: Path) -> list[Segment]:
    """Every process's part of the run's W&B files, in start order (files are named by time)."""
    return [Segment.read(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def read_wandb_log(path: Path) -> list[Any]:
    """Every record of one `.wandb` file, parsed with wandb.proto's `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        crc, length, chunk_type = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if chunk_type == 0 and length == 0:
            break  # preallocated zeros after the last record
        assert zlib.crc32(chunk, zlib.crc32(bytes([chunk_type]))) & 0xFFFFFFFF == crc
        pending += chunk
        if chunk_type in (1, 4):  # FULL or LAST chunk: a record is complete
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@dataclass
class Segment:
    """One process's part of a W&B run: its run record, history rows, config, summary."""

    run: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Segment:
        seg = cls()
        for record in read_wandb_log(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                seg.run = record.run
                seg.config.update(config_items(record.run.config.update))
            elif kind == "config":
                seg.config.update(config_items(record.config.update))
            elif kind == "history":
                seg.history.append(
                    {item_key(i): json.loads(i.value_json) for i in record.history.item}
                )
            elif kind == "summary":
                seg.summary.update(
                    {item_key(i): json.loads(i.value_json) for i in record.summary.update}
                )
            elif kind == "artifact":
                seg.artifacts.append(record.artifact)
        return seg

    def steps(self, key: str) -> list[int]:
        return [row["_step"] for row in self.history if key in row]


def item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def config_items(items: Any) -> dict[str, Any]:
    return {item_key(i): json.loads(i.value_json) for i in items}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any real W&B settings, with HOME in a temporary dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.pop("NETRC", None)
    return {
        **env,
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
