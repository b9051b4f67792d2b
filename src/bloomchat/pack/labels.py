"""From a packed row to what a model's forward pass needs, keeping conversations apart.

    from bloomchat.pack.labels import hf_labels, position_ids, cu_seqlens

Hugging Face causal LMs take `labels` aligned with `input_ids` and shift them inside
(logits at t predict labels at t+1). In a packed row that would let the last token of one
conversation be trained to predict the first token of the next; `hf_labels` masks every
segment start so no loss crosses a boundary (this matters for `full` rows and for pieces of a
split overlong conversation, whose first token may carry loss).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def segment_starts(segment_ids: np.ndarray) -> np.ndarray:
    """Boolean array: True where a new conversation (segment) starts."""
    seg = np.asarray(segment_ids)
    starts = np.ones(len(seg), dtype=bool)
    starts[1:] = seg[1:] != seg[:-1]
    return starts


def hf_labels(input_ids: np.ndarray, loss_mask: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """int64 labels: the token where loss_mask is 1 and it is not a segment's first token, else -100."""
    labels = np.where(np.asarray(loss_mask) == 1, np.asarray(input_ids, dtype=np.int64), IGNORE_INDEX)
    labels[segment_starts(segment_ids)] = IGNORE_INDEX
    return labels


def position_ids(segment_ids: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... restarting at each segment (for RoPE models; BLOOM's ALiBi ignores positions)."""
    seg = np.asarray(segment_ids)
    idx = np.arange(len(seg))
    start_idx = np.maximum.accumulate(np.where(segment_starts(seg), idx, 0))
    return idx - start_idx


def cu_seqlens(segment_ids: np.ndarray) -> np.ndarray:
    """Cumulative segment lengths [0, l1, l1+l2, ...] (int32), the form flash-attention's varlen takes."""
    starts = np.flatnonzero(segment_starts(segment_ids))
    return np.append(starts, len(segment_ids)).astype(np.int32)
