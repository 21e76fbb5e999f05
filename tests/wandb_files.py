"""Read W&B's offline run file (run-*.wandb), which W&B 0.31 writes instead of a summary JSON.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks
of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last),
holding serialized `wandb_internal_pb2.Record` protobufs.
"""

import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7


@dataclass
class OfflineRun:
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    history_keys: set[str] = field(default_factory=set)
    history_rows: int = 0
    history: list[dict[str, str]] = field(default_factory=list)  # each row: key -> the value as JSON text


def _chunks(raw: bytes):
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + _HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        data = raw[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            yield data
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            yield pending + data


def read_offline_run(run_file: Path) -> OfflineRun:
    raw = Path(run_file).read_bytes()
    assert raw[:4] == b":W&B", f"{run_file} is not a W&B run file"
    run = OfflineRun()
    for data in _chunks(raw):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.project, run.name, run.tags = record.run.project, record.run.display_name, list(record.run.tags)
        elif kind == "history":
            run.history_rows += 1
            row = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            run.history_keys.update(row)
            run.history.append(row)
    return run
