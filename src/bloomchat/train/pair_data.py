"""A split of packed pairs (`bloomchat.pack.pairs`): rows as in SFT, plus where each pair sits.

The rows are read by `PackedSplit` unchanged (so the schedule, the row statistics and the MFU
count work as for SFT); what a preference step needs on top comes from the pair columns: each
micro-batch also carries, for every loss token, its slot 2*pair + side (0 chosen, 1 rejected)
within the batch, the reply tokens per slot, the pairs' global indices (into the stored
reference log-probs) and their languages. The loss normaliser of a batch is its pair count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bloomchat.errors import BloomchatError
from bloomchat.train.data import PackedSplit, RowStats, collate


@dataclass
class PairRowStats(RowStats):
    pairs: np.ndarray | None = None  # pairs per row

    def weight(self, rows: np.ndarray, prompt_loss_weight: float) -> float:
        """The loss normaliser of a preference batch: its number of pairs."""
        return float(self.pairs[rows].sum())


class PairSplit(PackedSplit):
    """One split of a packed-pairs directory; `ref` ((pairs, 2) float64) once reference log-probs
    are attached (dpo / ipo)."""

    def __init__(self, shards_dir: Path, split: str = "train", cache_dir: Path | None = None):
        super().__init__(shards_dir, split, cache_dir=cache_dir)
        self.split = split
        if "pair_lang" not in self.ds.column_names:
            raise BloomchatError("these shards hold conversations, not pairs; a kind: dpo stage packs its data.pairs "
                                 "itself", where=str(shards_dir))
        col = self.ds.data.table.column("pair_lang").combine_chunks()
        counts = np.diff(col.offsets.to_numpy()).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        langs = col.values.to_pylist()
        self.langs = sorted(set(langs))
        self.lang_idx = torch.tensor([self.langs.index(x) for x in langs], dtype=torch.long) if langs else \
            torch.zeros(0, dtype=torch.long)
        s = self.stats
        self.stats = PairRowStats(s.lengths, s.loss_targets, s.pred_targets, s.max_id, pairs=counts)
        self.ref: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.offsets[-1])

    def pair_index(self, index: list[int]) -> torch.Tensor:
        """Global indices of the pairs of rows `index`, in row order."""
        return torch.from_numpy(np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]))

    def batch(self, index: list[int], *, pad_id: int, prompt_loss_weight: float = 0.0,
              pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
        """SFT's collation (loss on the reply tokens only) plus the pair columns (module doc)."""
        index = [int(i) for i in index]
        b = collate(self.rows(index), pad_id=pad_id, prompt_loss_weight=0.0, pad_to_multiple_of=pad_to_multiple_of)
        counts = torch.from_numpy(self.offsets[np.array(index) + 1] - self.offsets[np.array(index)])
        first = torch.cumsum(counts, 0) - counts  # batch-local index of each row's first pair
        n = b["input_ids"].shape[1]
        seg = b["segment_ids"].reshape(-1)[b["flat_index"]] - 1
        slot = 2 * (first[b["flat_index"] // n] + seg // 2) + seg % 2
        p = int(counts.sum())
        pidx = self.pair_index(index)
        b.update(slot=slot, n_pairs=p, norm=float(p), pair_index=pidx, lang_idx=self.lang_idx[pidx],
                 reply_tokens=torch.bincount(slot, minlength=2 * p).view(p, 2))
        if self.ref is not None:
            b["ref"] = self.ref[pidx]
        return b
