"""Labels, positions and cumulative lengths from packed rows never cross a conversation boundary."""

import numpy as np

from bloomchat.pack.labels import IGNORE_INDEX, cu_seqlens, hf_labels, position_ids


def test_labels_mask_prompts_and_segment_starts():
    ids = np.array([10, 11, 12, 13, 2, 20, 21, 22, 2], dtype=np.int32)
    mask = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=np.int8)  # rows of `full` may start with loss
    seg = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2], dtype=np.int16)
    assert hf_labels(ids, mask, seg).tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 13, 2,
                                                  IGNORE_INDEX, IGNORE_INDEX, 22, 2]


def test_positions_restart_and_cu_seqlens():
    seg = np.array([1, 1, 1, 2, 2, 3], dtype=np.int16)
    assert position_ids(seg).tolist() == [0, 1, 2, 0, 1, 0]
    assert cu_seqlens(seg).tolist() == [0, 3, 5, 6]
    assert position_ids(np.ones(4, dtype=np.int16)).tolist() == [0, 1, 2, 3]
