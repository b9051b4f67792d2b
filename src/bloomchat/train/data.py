"""Packed shards -> deterministic global batches -> padded micro-batches with loss weights.

The order of rows is a pure function of (seed, epoch), so a resumed run knows its data position
from the optimizer step alone: step s reads rows perm_e[p*G:(p+1)*G] with e = s // steps_per_epoch
and p = s % steps_per_epoch. Nothing is restarted or skipped after a crash.

Shards are opened through `datasets` (parquet -> Arrow cache, memory-mapped): random access to
any row without holding the set in RAM. Per-row counts (length, loss tokens, conversations) are
read once, streaming, as small numpy arrays; they give every process the loss normaliser of a
whole global batch without communication.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bloomchat.errors import BloomchatError


@dataclass
class RowStats:
    lengths: np.ndarray        # tokens per row
    loss_targets: np.ndarray   # loss-mask tokens that are predicted (not the first of a conversation)
    pred_targets: np.ndarray   # predicted tokens = length - conversations in the row
    max_id: int

    def weight(self, rows: np.ndarray, prompt_loss_weight: float) -> float:
        """Sum of token weights of `rows`: the loss normaliser (loss tokens, prompt ones weighted)."""
        lt = float(self.loss_targets[rows].sum())
        return lt + prompt_loss_weight * (float(self.pred_targets[rows].sum()) - lt)


def _row_stats(table) -> RowStats:
    lengths, loss_t, pred_t, max_id = [], [], [], -1
    for batch in table.to_batches(max_chunksize=4096):
        ids = batch.column("input_ids")
        offs = ids.offsets.to_numpy()
        vals = ids.values.to_numpy()
        seg = batch.column("segment_ids").values.to_numpy()
        loss = batch.column("loss_mask").values.to_numpy().astype(bool)
        n = np.diff(offs)
        if (n <= 0).any():
            raise BloomchatError("packed shards contain an empty row")
        first = np.zeros(len(seg), dtype=bool)
        first[1:] = seg[1:] != seg[:-1]
        first[offs[:-1] - offs[0]] = True
        lengths.append(n)
        loss_t.append(np.add.reduceat((loss & ~first).astype(np.int64), offs[:-1] - offs[0]))
        pred_t.append(n - np.add.reduceat(first.astype(np.int64), offs[:-1] - offs[0]))
        if len(vals):
            max_id = max(max_id, int(vals.max()))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return RowStats(cat(lengths), cat(loss_t), cat(pred_t), max_id)


def _corrupt(f: Path, e: Exception) -> BloomchatError:
    why = str(e).strip().splitlines()
    return BloomchatError(f"corrupt or unreadable parquet shard: {why[0] if why else type(e).__name__}", where=str(f))


def _check_footers(files: list[Path]) -> None:
    """A truncated shard has no parquet footer; reading the footers first (a few KB each) names it
    before `datasets` logs its own error about it."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_metadata(f)
        except Exception as e:  # ArrowInvalid: "Parquet magic bytes not found in footer ..."
            raise _corrupt(f, e) from None


def _unreadable(files: list[Path], e: Exception) -> BloomchatError:
    """Name the shard that cannot be read and why: `datasets` says only "An error occurred while
    generating the dataset" for a shard with corrupt pages, so each file is read again on its own."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_table(f, columns=["input_ids", "loss_mask", "segment_ids"])
        except Exception as fe:  # OSError "Corrupt snappy compressed data", ArrowInvalid, ...
            return _corrupt(f, fe)
    while e.__cause__ is not None or e.__context__ is not None:  # the innermost error says most
        e = e.__cause__ or e.__context__
    why = str(e).strip().splitlines()
    return BloomchatError(f"cannot read shards: {why[0] if why else type(e).__name__}", where=str(files[0].parent))


class PackedSplit:
    """One split (train/dev) of a packed-shards directory, random access by row index."""

    def __init__(self, shards_dir: Path, split: str = "train", cache_dir: Path | None = None):
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar

        files = sorted((Path(shards_dir) / split).glob("*.parquet"))
        if not files:
            raise BloomchatError(f"no {split} shards (*.parquet)", where=str(Path(shards_dir) / split))
        disable_progress_bar()
        _check_footers(files)
        try:
            self.ds = Dataset.from_parquet([str(f) for f in files], cache_dir=str(cache_dir) if cache_dir else None,
                                           keep_in_memory=False)
        except Exception as e:  # a corrupt or foreign parquet file
            raise _unreadable(files, e) from None
        missing = {"input_ids", "loss_mask", "segment_ids"} - set(self.ds.column_names)
        if missing:
            raise BloomchatError(f"shards lack column(s) {', '.join(sorted(missing))}", where=str(files[0]))
        self.stats = _row_stats(self.ds.data.table)

    def __len__(self) -> int:
        return len(self.ds)

    def rows(self, index: list[int]) -> list[dict[str, np.ndarray]]:
        got = self.ds[[int(i) for i in index]]
        return [{k: np.asarray(got[k][j]) for k in ("input_ids", "loss_mask", "segment_ids")}
                for j in range(len(index))]

    def batch(self, index: list[int], *, pad_id: int, prompt_loss_weight: float,
              pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
        """The rows `index` collated for one forward (a preference split adds its pair columns)."""
        return collate(self.rows(index), pad_id=pad_id, prompt_loss_weight=prompt_loss_weight,
                       pad_to_multiple_of=pad_to_multiple_of)


@dataclass
class Schedule:
    """How a stage walks its data: steps, the rows of each step, and which slot each process reads."""

    n_rows: int
    global_batch: int
    micro_batch: int
    world_size: int
    epochs: float
    max_steps: int | None
    seed: int

    @property
    def accum(self) -> int:
        # e.g. 128 global / (8 per process x 16 processes) = 1 micro-batch per process per step
        return self.global_batch // (self.micro_batch * self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_rows / self.global_batch)

    @property
    def total_steps(self) -> int:
        total = math.ceil(self.epochs * self.steps_per_epoch)
        return min(total, self.max_steps) if self.max_steps else total

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def step_rows(self, step: int) -> np.ndarray:
        """Row indices of optimizer step `step` (0-based), the same on every process."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self._perm(epoch)[pos * self.global_batch:(pos + 1) * self.global_batch]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def slot_rows(self, rows: np.ndarray, micro: int, rank: int) -> np.ndarray:
        """Rows of micro-batch `micro` on process `rank`: slots interleave so that a short last
        batch is spread over all processes."""
        slots = self.world_size * self.accum
        return rows[micro * self.world_size + rank::slots]


#: Row length multiple on a GPU. PyTorch's cuDNN attention builds an execution plan for each new
#: sequence length (hundreds of ms), and packed rows padded only to the batch's longest row have a
#: new length nearly every step: on an H200, 6 steps of small-50m ran at 12k tok/s against 62k
#: with the eager kernel. Multiples of 64 leave at most 32 lengths up to 2048 and cost at most 63
#: padding tokens a row (which attend only to themselves and carry no loss).
GPU_PAD_MULTIPLE = 64


def collate(rows: list[dict[str, np.ndarray]], *, pad_id: int, prompt_loss_weight: float,
            pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest row (rounded up to `pad_to_multiple_of`); weights mark predicted tokens
    (1 = bot token, prompt_loss_weight = other), 0 for a conversation's first token (nothing before
    it in its conversation) and padding."""
    n = max(len(r["input_ids"]) for r in rows)
    n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    b = len(rows)
    ids = torch.full((b, n), pad_id, dtype=torch.long)
    seg = torch.zeros((b, n), dtype=torch.long)
    loss = torch.zeros((b, n), dtype=torch.bool)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.from_numpy(r["input_ids"].astype(np.int64))
        seg[i, :k] = torch.from_numpy(r["segment_ids"].astype(np.int64))
        loss[i, :k] = torch.from_numpy(r["loss_mask"].astype(bool))
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    w = torch.where(loss[:, 1:], 1.0, float(prompt_loss_weight)) * same
    w = torch.cat([w, torch.zeros(b, 1)], dim=1)  # weight of position t = weight of predicting t+1
    targets = torch.cat([ids[:, 1:], torch.full((b, 1), pad_id, dtype=torch.long)], dim=1)
    flat = w.reshape(-1)
    index = torch.nonzero(flat > 0).squeeze(1)
    return {"input_ids": ids, "segment_ids": seg, "flat_index": index,
            "targets": targets.reshape(-1)[index], "weights": flat[index],
            "tokens": int(sum(len(r["input_ids"]) for r in rows)),
            "loss_tokens": int((loss[:, 1:] & same).sum())}
