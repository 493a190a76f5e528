"""The row planner: which sub-tokens of a text each model row sees and which it predicts, for training, evaluation
and tagging alike.

A row is a window `[start, end)` of a text's sub-tokens (special tokens not counted) and the range `[own_start,
own_end)` inside it whose predictions it owns; the owned ranges of a text's rows tile its sub-tokens exactly once.
Two choices make a plan:

- the **context** (`config.Context`): `none` cuts the text at its sentences first, so no row sees past its sentence
  (what a model trained on single sentences saw); `neighbours` cuts at sentences too, then widens each row by up to
  `context` sub-tokens of the text on each side, which it sees but does not predict (FLERT's document context);
  `document` lets rows run across sentences.
- the **split** of a segment longer than a row (`SPLITS`): `words` cuts it into consecutive pieces of whole words
  that own themselves (training and evaluation rows); `windows` covers it with windows overlapping by `stride`,
  each token owned by the window where it has the most context on both sides (tagging rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


SPLITS = ("words", "windows")


class Window(NamedTuple):
    start: int
    end: int
    own_start: int
    own_end: int


def cuts_sentences(context: str) -> bool:
    """Whether rows under this context policy keep to the sentences of a text (every policy but `document`)."""
    return context != "document"


def side_context(context: str, size: int) -> int:
    """Sub-tokens a row sees on each side of what it predicts under this context policy (`size` for neighbours)."""
    return size if context == "neighbours" else 0


def plan_windows(n: int, size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Cover `n` sub-tokens with windows of at most `size` tokens overlapping by `stride`; each token is owned by
    the window whose centre is nearest (the one where it has the most context on both sides).

    Returns (start, end, own_start, own_end) per window; the owned ranges tile [0, n) exactly."""
    if n <= size:
        return [(0, n, 0, n)]
    step = size - stride
    starts = list(range(0, n - size, step)) + [n - size]
    out = []
    own_lo = 0
    for k, a in enumerate(starts):
        if k + 1 < len(starts):
            # First token whose distance to the next window's centre is smaller (ties stay with this window).
            own_hi = (2 * a + size - 1 + 2 * starts[k + 1] + size - 1) // 4 + 1
        else:
            own_hi = n
        out.append((a, a + size, own_lo, own_hi))
        own_lo = own_hi
    return out


def split_at_words(word_ids: Sequence[int | None], budget: int) -> list[tuple[int, int]]:
    """Sub-token ranges of at most `budget` that start at word starts (a single over-long word is cut)."""
    n = len(word_ids)
    if n <= budget:
        return [(0, n)]
    pieces, start = [], 0
    while start < n:
        end = min(start + budget, n)
        if end < n:
            cut = end
            while cut > start and word_ids[cut] == word_ids[cut - 1]:
                cut -= 1
            end = cut if cut > start else end
        pieces.append((start, end))
        start = end
    return pieces


def sentence_token_starts(word_ids: np.ndarray, sentence_words: Sequence[int]) -> list[int]:
    """The first sub-token of each sentence, given the first word of each (`words.sentence_starts`) and each
    sub-token's word id (non-decreasing); sentences whose words have no sub-tokens are dropped."""
    starts = np.searchsorted(word_ids, np.asarray(sentence_words, dtype=word_ids.dtype)).tolist()
    return sorted({s for s in starts if s < len(word_ids)} | ({0} if len(word_ids) else set()))


def plan_rows(n: int, size: int, split: str, *, stride: int = 0, segments: Sequence[int] | None = None,
              word_ids: Sequence[int | None] | None = None, context: int = 0, total: int = 0) -> list[Window]:
    """The rows of one text of `n` sub-tokens, at most `size` sub-tokens each.

    `segments`: the first sub-token of each segment whose owned range no row may cross (sentences for contexts
    `none` and `neighbours`); None: one segment. `split`: how a segment longer than `size` is cut (`words` needs
    `word_ids`, `windows` uses `stride`). `context`: sub-tokens of the text each row also sees on each side, within
    `total` sub-tokens in all (0: `size`)."""
    if n == 0:
        return []
    bounds = [0, n] if not segments else [*segments, n]
    out: list[Window] = []
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        if split == "windows":
            out.extend(Window(lo + a, lo + b, lo + c, lo + d) for a, b, c, d in plan_windows(hi - lo, size, stride))
        elif split == "words":
            if word_ids is None:
                raise ValueError("plan_rows: split 'words' needs word_ids")
            out.extend(Window(lo + a, lo + b, lo + a, lo + b) for a, b in split_at_words(word_ids[lo:hi], size))
        else:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return [widen(w, n, total or size, context) for w in out] if context else out


def widen(w: Window, n: int, size: int, context: int) -> Window:
    """`w` seeing up to `context` more sub-tokens of its text on each side, within `size` in all: the room left is
    shared evenly, and a side that runs out of text gives its share to the other."""
    room = max(size - (w.end - w.start), 0)
    left = min(context, room // 2, w.start)
    right = min(context, room - left, n - w.end)
    left = min(context, room - right, w.start)
    return Window(w.start - left, w.end + right, w.own_start, w.own_end)
