"""Windows into fixed-shape batches: grouped by length bucket, or packed several to a row.

Packed rows (`tag.pack_length` > 0, a model whose `packs_rows`): every window of at most that many positions goes
into rows of exactly that length, each window `[CLS] ... [SEP]` with its own segment id (1, 2, ... in the row, 0
for padding), so the model sees it alone (`flaxner.models.masks`) while the batch carries almost no padding and
one shape serves every short window. Longer windows keep a row of their own in their bucket."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flaxner.data.batching import bucket_for
from flaxner.data.packing import best_fit
from flaxner.tagging.windows import Row


def rows_per_batch(bucket: int, batch_size: int, batch_tokens: int, multiple: int) -> int:
    """Rows of a batch of padded length `bucket`: a fixed token budget (short rows, many of them) when
    `batch_tokens` is set, else `batch_size`; a multiple of the device count."""
    rows = max(batch_tokens // bucket, 1) if batch_tokens else batch_size
    return max(multiple, rows // multiple * multiple)


def small_rows(full: int, multiple: int) -> int:
    """Rows of a batch that flushes a bucket's last few rows: an eighth of a full batch (one more shape per
    bucket at most), so a small tail is not padded out to a whole batch of empty rows."""
    return max(multiple, (full // 8) // multiple * multiple)


def bins(items: list[tuple[int, Row]], length: int) -> list[list[tuple[int, Row]]]:
    """Windows per packed row (`flaxner.data.packing.best_fit`, in input order), rows in the order started."""
    return [[items[i] for i in row] for row in best_fit([r.length for _, r in items], length)]


def place(batch: list[list[tuple[int, Row]]]) -> list[Row]:
    """Set each window's slot, offset and segment from its packed row; the windows in batch order."""
    rows = []
    for slot, members in enumerate(batch):
        at = 0
        for seg, (_, r) in enumerate(members, 1):
            r.slot, r.offset, r.segment = slot, at, seg
            at += r.length
            rows.append(r)
    return rows


def pack(rows: list[Row], buckets: Sequence[int], batch_size: int, batch_tokens: int, multiple: int = 1,
         flush: bool = False, pack_length: int = 0) -> tuple[list[tuple[int, list[Row], int]], list[Row]]:
    """Cut rows (given in input order) into full (length, windows, n_rows) batches, returned in the input order of
    their first windows: the head of the look-ahead completes first, so documents are released (and committed)
    steadily, not all at a chunk's end. Windows of at most `pack_length` positions (0: none) share packed rows
    of that length; the others are grouped by their bucket, one to a row, in input order.

    A group's tail is returned to be topped up by later rows, unless `flush` is set or a row of it was carried
    once already: then it goes out in batches of `small_rows` rows."""
    groups: dict[int, list[tuple[int, Row]]] = {}
    for i, r in enumerate(rows):
        b = pack_length if r.length <= pack_length else bucket_for(r.length, buckets)
        groups.setdefault(b, []).append((i, r))
    out: list[tuple[int, tuple[int, list[Row], int]]] = []
    rest: list[tuple[int, Row]] = []
    for b, group in groups.items():
        slots = bins(group, b) if b == pack_length else [[item] for item in group]
        k = rows_per_batch(b, batch_size, batch_tokens, multiple)
        full = len(slots) // k * k
        cuts = [(slots[i:i + k], k) for i in range(0, full, k)]
        tail = slots[full:]
        if tail and (flush or any(r.carried for s in tail for _, r in s)):
            n = small_rows(k, multiple)
            cuts += [(tail[i:i + n], n) for i in range(0, len(tail), n)]
        else:
            rest.extend(item for s in tail for item in s)
        out += [(min(i for s in c for i, _ in s), (b, place(c), n)) for c, n in cuts]
    out.sort(key=lambda x: x[0])
    rest.sort(key=lambda x: x[0])
    return [x for _, x in out], [r for _, r in rest]


def collate(rows: list[Row], length: int, n_rows: int, cls_id: int, sep_id: int,
            pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and the mask, [n_rows, length] int32: each window at its slot and offset, the mask holding its
    segment id (1 for a window alone in its row: the plain attention mask); missing rows are all padding."""
    ids = np.full((n_rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((n_rows, length), dtype=np.int32)
    for row in rows:
        m, r, a = row.end - row.start, row.slot, row.offset
        ids[r, a] = cls_id
        ids[r, a + 1:a + m + 1] = row.doc.ids[row.start:row.end]
        ids[r, a + m + 1] = sep_id
        mask[r, a:a + m + 2] = row.segment
    return ids, mask
