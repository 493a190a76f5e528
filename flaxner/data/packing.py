"""Packed rows: several sentences (or a tagger's windows) share one fixed-length row, each a segment with its own
id (1, 2, ... in the row, 0 for padding), which the model keeps apart (`flaxner.models.masks`). This module holds
the bin packer training, evaluation and tagging share, and the collation of packed training rows; which rows
form a batch and the shapes it takes are `flaxner.data.batching`'s."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence

import numpy as np

from flaxner.data.labels import IGNORE
from flaxner.data.splits import Encoded


def best_fit(sizes: Sequence[int], length: int) -> list[list[int]]:
    """Best fit in input order: each item (of `sizes[i]` positions, at most `length`) goes to the open row with
    the least room that holds it (of those, the one that reached that room last), else starts a row. Returns
    the items' indices per row, rows in the order they were started."""
    out: list[list[int]] = []
    room: dict[int, list[int]] = {}  # free positions -> open rows with that room
    free_sizes: list[int] = []  # the keys of `room`, sorted
    for i, n in enumerate(sizes):
        j = bisect_left(free_sizes, n)
        if j == len(free_sizes):
            k, free = len(out), length
            out.append([])
        else:
            free = free_sizes[j]
            k = room[free].pop()
            if not room[free]:
                del room[free], free_sizes[j]
        out[k].append(i)
        if free - n not in room:
            room[free - n] = []
            insort(free_sizes, free - n)
        room[free - n].append(k)
    return out


def pack_batch(lengths: np.ndarray, length: int) -> list[list[int]]:
    """Positions of a batch's rows (of `lengths` tokens, each at most `length`) per packed row: best fit
    taking the longest first (a stable sort, so length-grouped batches keep their order)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [[int(order[i]) for i in b] for b in best_fit([int(lengths[i]) for i in order], length)]


def collate_packed(enc: Encoded, slots: Sequence[Sequence[int]], rows: int, length: int,
                   pad_id: int = 0) -> dict[str, np.ndarray]:
    """input_ids, segment_ids and labels, int32 [rows, length]: the encoded rows listed in `slots[r]` one after
    the other in packed row r, segment ids 1, 2, ...; missing rows are all padding with IGNORE labels."""
    input_ids = np.full((rows, length), pad_id, dtype=np.int32)
    labels = np.full((rows, length), IGNORE, dtype=np.int32)
    segments = np.zeros((rows, length), dtype=np.int32)
    for r, members in enumerate(slots):
        at = 0
        for seg, i in enumerate(members, 1):
            n = len(enc.input_ids[i])
            input_ids[r, at:at + n] = enc.input_ids[i]
            labels[r, at:at + n] = enc.labels[i]
            segments[r, at:at + n] = seg
            at += n
    return {"input_ids": input_ids, "segment_ids": segments, "labels": labels}


def real_tokens(batch: dict[str, np.ndarray]) -> int:
    """The tokens of a batch that are not padding, packed or not."""
    return int(np.count_nonzero(batch["segment_ids"] if "segment_ids" in batch else batch["attention_mask"]))
