"""Parquet shards of packed rows, written and read a bounded piece at a time.

Layout (the "Packed shards" contract in DEVELOPERS.md):

    OUTDIR/train/train-00000.parquet, train-00001.parquet, ...
    OUTDIR/dev/dev-00000.parquet, ...
    OUTDIR/stats.json

Columns: input_ids list<int32>, loss_mask list<int8>, segment_ids list<int16>; no padding.
Rows are written in row groups, so readers (pyarrow, `datasets` streaming) never need more
than one row group in memory; a shard closes after `shard_rows` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bloomchat.pack.packers import Row

SPLITS: tuple[str, ...] = ("train", "dev")
SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.int8())),
    ("segment_ids", pa.list_(pa.int16())),
])
#: Rows per row group: 1024 rows x 2048 tokens x 7 bytes = 14.7 MB in memory at most.
ROW_GROUP_ROWS = 1024
#: Rows per shard: 16384 rows x 2048 tokens = 33.5M tokens, ~235 MB uncompressed at most.
SHARD_ROWS = 16384


def _list_array(parts: list[np.ndarray], dtype) -> pa.Array:
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def rows_to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            _list_array([r.input_ids for r in rows], np.int32),
            _list_array([r.loss_mask for r in rows], np.int8),
            _list_array([r.segment_ids for r in rows], np.int16),
        ],
        schema=SCHEMA,
    )


class ShardWriter:
    """Append rows; writes a row group every `row_group_rows` rows and a new file every `shard_rows`."""

    def __init__(self, out_dir: Path, split: str, *, shard_rows: int = SHARD_ROWS,
                 row_group_rows: int = ROW_GROUP_ROWS):
        self.dir = Path(out_dir) / split
        self.split = split
        self.shard_rows = max(1, shard_rows)
        self.row_group_rows = max(1, min(row_group_rows, self.shard_rows))
        self.files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._buf: list[Row] = []
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, row: Row) -> None:
        self._buf.append(row)
        if len(self._buf) >= self.row_group_rows or self._in_shard + len(self._buf) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        if self._writer is None:
            path = self.dir / f"{self.split}-{len(self.files):05d}.parquet"
            self.files.append(path)
            self._writer = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        self._writer.write_table(rows_to_table(self._buf), row_group_size=len(self._buf))
        self._in_shard += len(self._buf)
        self._buf = []
        if self._in_shard >= self.shard_rows:
            self._writer.close()
            self._writer, self._in_shard = None, 0

    def close(self) -> list[Path]:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.files


def shard_files(out_dir: str | Path, split: str = "train") -> list[Path]:
    """The shards of one split, in order."""
    return sorted((Path(out_dir) / split).glob("*.parquet"))


def iter_rows(out_dir: str | Path, split: str = "train") -> Iterator[dict[str, np.ndarray]]:
    """Stream rows of a split as dicts of numpy arrays, one row group in memory at a time."""
    for path in shard_files(out_dir, split):
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            cols = {name: table.column(name).combine_chunks() for name in SCHEMA.names}
            for i in range(table.num_rows):
                yield {name: cols[name][i].values.to_numpy(zero_copy_only=False) for name in SCHEMA.names}


def load_packed(out_dir: str | Path, split: str = "train", *, streaming: bool = True):
    """The split as a `datasets` (Iterable)Dataset over its parquet shards."""
    from datasets import load_dataset

    files = [str(p) for p in shard_files(out_dir, split)]
    return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
