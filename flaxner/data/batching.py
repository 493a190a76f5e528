"""Batching and shape policy: bucket lengths (given or fitted), the batch order of every epoch (the epoch plan),
collation into fixed shapes (packed rows with `data.pack_length`), and padding statistics. A pure function of the
data's lengths, the config and the seed, so the loop, the compile-ahead, a resumed run and the notebook all read
the same plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from flaxner.config import DataConfig, TrainConfig
from flaxner.data.packing import collate_packed, pack_batch
from flaxner.data.splits import DataError, Encoded
from flaxner.data.labels import IGNORE

# Packed training batches take one of at most this many row counts per row length, fitted to the run's batches
# as `fit_buckets` fits lengths: each count is one more compiled shape, each row short of it costs a padded row.
ROW_COUNTS = 6


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket length that holds `length` tokens."""
    for b in buckets:
        if length <= b:
            return b
    raise DataError(f"a sequence of {length} sub-tokens exceeds the largest bucket {buckets[-1]}")


def fit_buckets(maxima: Sequence[int], count: int, multiple: int = 1) -> list[int]:
    """The `count` padded lengths (multiples of `multiple`) that waste the fewest tokens when each batch, given
    by its longest row, is padded to the smallest one that fits it: an exact dynamic programme over the
    distinct batch maxima."""
    maxima = -(-np.asarray(maxima, dtype=np.int64) // multiple) * multiple
    vals, counts = np.unique(maxima, return_counts=True)
    n = len(vals)
    if n <= count:
        return [int(v) for v in vals]
    rows = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)  # rows[i]: batches below vals[i]
    # best[i]: least padded length summed over the batches up to vals[i], vals[i] being the last bucket so far
    best = rows[1:] * vals
    later = np.triu(np.ones((n, n), dtype=bool), k=1)  # later[j, i]: j < i
    backs = []
    for _ in range(count - 1):
        # cand[j, i]: the best up to vals[j], then one bucket vals[i] for the batches in (vals[j], vals[i]]
        cand = np.where(later, best[:, None] + (rows[None, 1:] - rows[1:, None]) * vals[None, :], np.inf)
        backs.append(np.argmin(cand, axis=0))
        best = cand[backs[-1], np.arange(n)]
    i, out = n - 1, [int(vals[-1])]
    for back in reversed(backs):
        i = int(back[i])
        out.append(int(vals[i]))
    return sorted(out)


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, mode: str = "grouped",
                shuffle: bool = True) -> list[np.ndarray]:
    """Row indices of every batch of one epoch, a pure function of (seed, epoch). "grouped" sorts random
    mega-batches of 50 batches by length, as the HF Trainer's `group_by_length`, then shuffles the batch order;
    "random" is a plain permutation; shuffle=False sorts by length for evaluation."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    if mode == "random":
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    mega = batch_size * 50
    batches = []
    for m in range(0, n, mega):
        chunk = perm[m:m + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    # The one short batch (if any) stays last, so every other step has the full batch.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    order = rng.permutation(len(full))
    return [full[i] for i in order] + short


def epoch_rows(enc: Encoded, dropout: float, seed: int, epoch: int) -> Encoded:
    """The training rows of one epoch: `enc`'s, except that with `data.context_dropout` p > 0 each row's left and
    right context (`data.context: neighbours`) are each left out with probability p, drawn from (seed, epoch)
    alone, as flair's `context_dropout` (FLERT) does per batch: the model also learns sentences framed on one side
    or none, and a resumed or multi-host run sees the very rows an unbroken one does."""
    if not dropout or enc.context_left is None or enc.own_lengths is None:
        return enc
    return drop_context(enc, np.random.default_rng([seed, epoch, 1]).random((len(enc.input_ids), 2)) < dropout)


# The context sides each view of `data.context_views` leaves out: (left, right).
VIEW_DROPS = {"full": (False, False), "left": (False, True), "right": (True, False), "none": (True, True)}


def view_rows(enc: Encoded, view: str) -> Encoded:
    """Every row of `enc` as one context view sees it (`data.context_views`): `full` as encoded, `left` or `right`
    with only that side's context, `none` with only the sentence it predicts: the rows `context_dropout` trains on."""
    if view == "full" or enc.context_left is None or enc.own_lengths is None:
        return enc
    return drop_context(enc, np.tile(np.array(VIEW_DROPS[view], dtype=bool), (len(enc.input_ids), 1)))


def drop_context(enc: Encoded, drop: np.ndarray) -> Encoded:
    """`enc` with the left (`drop[i, 0]`) and right (`drop[i, 1]`) context of each row i left out."""
    ids, labels, words = [], [], []
    for i, (x, y, w) in enumerate(zip(enc.input_ids, enc.labels, enc.word_index, strict=True)):
        left = int(enc.context_left[i])
        lo = 1 + left * drop[i, 0]  # after the first special token
        hi = len(x) - 1 - (len(x) - 2 - left - int(enc.own_lengths[i])) * drop[i, 1]  # before the last
        keep = np.r_[0, lo:hi, len(x) - 1]
        ids.append(x[keep])
        labels.append(y[keep])
        words.append(w[keep])
    return dataclasses.replace(enc, input_ids=ids, labels=labels, word_index=words,
                               context_left=np.where(drop[:, 0], 0, enc.context_left))


@dataclass(frozen=True)
class EpochPlan:
    """Every training batch of a run: per epoch, the row indices of each batch and the shape it is padded to.

    A batch's shape is its padded length or, with packed rows (`pack_length` > 0), (rows, row length): its
    sentences share rows of `pack_length` (of their bucket when the longest is longer; `packing.pack_batch`),
    and it takes the next of the row counts fitted for that length (`row_counts`)."""

    batch_size: int
    buckets: tuple[int, ...]
    orders: tuple[tuple[np.ndarray, ...], ...]  # orders[epoch][batch]: row indices
    padded: tuple[tuple[int, ...], ...]  # padded[epoch][batch]: the (packed) row length of that batch
    pack_length: int = 0
    rows: tuple[tuple[int, ...], ...] = ()  # packed: rows[epoch][batch], the batch's row count
    row_counts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # packed: row length -> its row counts

    @property
    def epochs(self) -> int:
        return len(self.orders)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.orders[0])

    def shape(self, epoch: int, batch: int) -> int | tuple[int, int]:
        """The compiled shape of one batch: its padded length, or (rows, row length) when packed."""
        return (self.rows[epoch][batch], self.padded[epoch][batch]) if self.pack_length else self.padded[epoch][batch]

    def dims(self, shape: int | tuple[int, int]) -> tuple[int, int]:
        """(rows, length) of a `shape`."""
        return shape if isinstance(shape, tuple) else (self.batch_size, shape)

    def row_length(self, longest: int) -> int:
        """The row length of a packed batch whose longest sentence has `longest` tokens."""
        return self.pack_length if longest <= self.pack_length else bucket_for(longest, self.buckets)

    def rows_for(self, used: int, length: int) -> int:
        """Rows of a packed batch that fills `used` rows of `length`: the next fitted count (batch_size above)."""
        return next((n for n in self.row_counts.get(length, ()) if n >= used), self.batch_size)

    def collate(self, enc: Encoded, idx: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
        """Rows `idx` as the plan pads them: `collate`'s batch, or packed (input_ids, segment_ids, labels)."""
        if not self.pack_length:
            return collate(enc, idx, self.batch_size, self.buckets, pad_id)
        lengths = np.array([len(enc.input_ids[i]) for i in idx])
        n = self.row_length(int(lengths.max()))
        slots = [[idx[i] for i in s] for s in pack_batch(lengths, n)]
        return collate_packed(enc, slots, self.rows_for(len(slots), n), n, pad_id)

    def shape_of(self, batch: dict[str, np.ndarray]) -> int | tuple[int, int]:
        """The `shape` of a collated batch."""
        rows, length = batch["input_ids"].shape
        return (rows, length) if self.pack_length else length

    def first_uses(self, epoch: int = 0, batch: int = 0,
                   steps: int | None = None) -> list[tuple[int, int | tuple[int, int]]]:
        """(step, shape) where each training shape is first used from (epoch, batch) on, steps counted from
        there, within `steps` steps (default: to the end of the plan)."""
        out, seen, step = [], set(), 0
        for e in range(epoch, self.epochs):
            for b in range(batch if e == epoch else 0, self.steps_per_epoch):
                if steps is not None and step >= steps:
                    return out
                shape = self.shape(e, b)
                if shape not in seen:
                    seen.add(shape)
                    out.append((step, shape))
                step += 1
        return out

    def shapes(self) -> list[int | tuple[int, int]]:
        """The shapes the plan's batches use."""
        return sorted({self.shape(e, b) for e in range(self.epochs) for b in range(self.steps_per_epoch)})

    def eval_shapes(self, lengths: np.ndarray, batch_size: int) -> list[int]:
        """The padded lengths an evaluation of rows of `lengths` uses, packed as the run packs (`eval_lengths`)."""
        return eval_lengths(lengths, batch_size, self.buckets, self.pack_length)

    def padding_stats(self, lengths: np.ndarray, epoch: int = 0) -> dict[str, float]:
        """Real and padded token counts of one epoch's batches (rows of `lengths`), and the shapes they compile."""
        real = sum(int(lengths[idx].sum()) for idx in self.orders[epoch])
        shapes = [self.shape(epoch, b) for b in range(self.steps_per_epoch)]
        padded = sum(r * n for r, n in map(self.dims, shapes))
        return {"real_tokens": real, "padded_tokens": padded, "padding": 1 - real / padded,
                "shapes": sorted(set(shapes))}


def plan_epochs(lengths: np.ndarray | Sequence[np.ndarray], data: DataConfig, train: TrainConfig, multiple: int = 1,
                devices: int = 1) -> EpochPlan:
    """The run's plan: `train.epochs` batch orders (`batch_order`), then the padded lengths: `data.buckets`, or
    with `data.fit_buckets` = k, the k lengths fitted to the batches of all epochs (`fit_buckets`) followed by
    the configured buckets above them for longer evaluation rows. With `data.pack_length` (rounded up to
    `multiple`), the lengths are fitted to the batches too long to pack, and each row length's `ROW_COUNTS`
    row counts (multiples of `devices`) to its batches. `lengths`: the rows' lengths, or a list of each epoch's
    (`epoch_rows`)."""
    per_epoch = list(lengths) if isinstance(lengths, list | tuple) else [lengths] * train.epochs
    orders = tuple(tuple(batch_order(per_epoch[epoch], train.batch_size, train.seed, epoch, train.batching))
                   for epoch in range(train.epochs))
    maxima = [[int(n[idx].max()) for idx in ep] for ep, n in zip(orders, per_epoch, strict=True)]
    pack = -(-data.pack_length // multiple) * multiple
    buckets = tuple(data.buckets)
    longer = [m for ep in maxima for m in ep if m > pack]
    if data.fit_buckets and longer:
        fitted = fit_buckets(longer, data.fit_buckets, multiple)
        buckets = tuple(fitted + [b for b in data.buckets if b > fitted[-1]])
    if not pack:
        return EpochPlan(train.batch_size, buckets, orders,
                         tuple(tuple(bucket_for(m, buckets) for m in ep) for ep in maxima))
    plan = EpochPlan(train.batch_size, buckets, orders, (), pack)
    padded = tuple(tuple(plan.row_length(m) for m in ep) for ep in maxima)
    used = [[len(pack_batch(lens[idx], n)) for idx, n in zip(o, p, strict=True)]
            for o, p, lens in zip(orders, padded, per_epoch, strict=True)]
    by_length: dict[int, list[int]] = {}
    for ep_used, ep_padded in zip(used, padded, strict=True):
        for u, n in zip(ep_used, ep_padded, strict=True):
            by_length.setdefault(n, []).append(u)
    plan = EpochPlan(train.batch_size, buckets, orders, padded, pack, (),
                     {n: tuple(fit_buckets(u, ROW_COUNTS, devices)) for n, u in sorted(by_length.items())})
    rows = tuple(tuple(plan.rows_for(u, n) for u, n in zip(a, b, strict=True))
                 for a, b in zip(used, padded, strict=True))
    return EpochPlan(train.batch_size, buckets, orders, padded, pack, rows, plan.row_counts)


def run_buckets(data: DataConfig, train: TrainConfig, lengths: np.ndarray, multiple: int = 1) -> tuple[int, ...]:
    """The padded lengths a run uses (`plan_epochs(...).buckets`)."""
    return plan_epochs(lengths, data, train, multiple).buckets


def eval_batches(lengths: np.ndarray, batch_size: int, buckets: Sequence[int],
                 pack_length: int = 0) -> list[tuple[int, list[list[int]]]]:
    """Evaluation batches as (padded length, the row indices in each of its rows), longest rows first: batches of
    `batch_size` rows of one each (`iter_batches(shuffle=False)`'s), or with `pack_length`, the rows that fit
    share rows of that length (best fit, longest first), `batch_size` rows a batch; longer rows keep one each."""
    order = np.argsort(-lengths, kind="stable")
    long = [int(i) for i in order if lengths[i] > pack_length]
    out = [(bucket_for(int(lengths[long[k]]), buckets), [[i] for i in long[k:k + batch_size]])
           for k in range(0, len(long), batch_size)]
    short = order[len(long):]
    slots = [[int(short[i]) for i in s] for s in pack_batch(lengths[short], pack_length)]
    return out + [(pack_length, slots[k:k + batch_size]) for k in range(0, len(slots), batch_size)]


def eval_lengths(lengths: np.ndarray, batch_size: int, buckets: Sequence[int], pack_length: int = 0) -> list[int]:
    """The padded lengths an evaluation of these rows uses (`eval_batches`)."""
    return sorted({n for n, _ in eval_batches(lengths, batch_size, buckets, pack_length)})


def collate(enc: Encoded, idx: np.ndarray, batch_size: int, buckets: Sequence[int],
            pad_id: int = 0) -> dict[str, np.ndarray]:
    """Pad rows `idx` to a fixed [batch_size, bucket] shape; missing rows are all-padding with IGNORE labels."""
    seq = bucket_for(max(len(enc.input_ids[i]) for i in idx), buckets)
    input_ids = np.full((batch_size, seq), pad_id, dtype=np.int32)
    labels = np.full((batch_size, seq), IGNORE, dtype=np.int32)
    mask = np.zeros((batch_size, seq), dtype=np.int32)
    for r, i in enumerate(idx):
        n = len(enc.input_ids[i])
        input_ids[r, :n] = enc.input_ids[i]
        labels[r, :n] = enc.labels[i]
        mask[r, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def iter_batches(enc: Encoded, batch_size: int, buckets: Sequence[int], seed: int = 0, epoch: int = 0,
                 mode: str = "grouped", shuffle: bool = True, start: int = 0,
                 pad_id: int = 0) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (row indices, padded batch) for one epoch, from batch number `start` on."""
    for idx in batch_order(enc.lengths, batch_size, seed, epoch, mode, shuffle)[start:]:
        yield idx, collate(enc, idx, batch_size, buckets, pad_id)


def padding_stats(enc: Encoded, batch_size: int, buckets: Sequence[int], seed: int = 0,
                  mode: str = "grouped") -> dict[str, float]:
    """`EpochPlan.padding_stats` of epoch 0 batched as given, padded to `buckets` as they are."""
    plan = plan_epochs(enc.lengths, DataConfig(buckets=tuple(buckets), fit_buckets=0),
                       TrainConfig(batch_size=batch_size, seed=seed, epochs=1, batching=mode))
    return plan.padding_stats(enc.lengths)
