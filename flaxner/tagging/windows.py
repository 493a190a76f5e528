"""Pure host-side pieces of tagging: sub-token windows, fixed-shape batches by length bucket, and word/span
aggregation of per-token predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding

from flaxner.data.batching import VIEW_DROPS
from flaxner.data.labels import spans_from_ids
from flaxner.data.rows import cuts_sentences, plan_rows, sentence_token_starts


@dataclass(slots=True)
class DocState:
    """A document in flight: its sub-tokens and the per-token predictions its windows fill in."""

    index: int
    text: str
    ids: np.ndarray        # [n] int32, no special tokens
    word_ids: np.ndarray   # [n] int32
    offsets: np.ndarray | None = None  # [n, 2] character offsets into `text`; None: read from `enc` when asked
    pending: int = 0       # windows not yet predicted
    pred: np.ndarray | None = None   # [n] label ids ("first") or [n, C] probabilities
    score: np.ndarray | None = None  # [n] probability of pred ("first")
    enc: Any = None        # the tokenizer's Encoding of `text`
    # Start of each word in `text` when the text was split into words before tokenizing (the Encoding's offsets
    # are then within each word); None: the Encoding's offsets are into `text`.
    word_starts: np.ndarray | None = None
    # First sub-token of each sentence, when rows must keep to sentences (`rows.cuts_sentences`); None: one segment.
    segments: list[int] | None = None
    # Its other cuts into sentences (`tag.sentence_thresholds`): rows are planned for each (`rows_for`).
    more_segments: list[list[int]] | None = None
    # A document of several input lines (`join_lines`): each line's DocState and where its sub-tokens start here.
    parts: list[tuple[DocState, int]] | None = None
    # Its rows add weighted probabilities (`view_rows`), and "first" reads label ids and scores: made at the end.
    argmax_at_end: bool = False

    def token_chars(self, t: int) -> tuple[int, int]:
        """Character offsets of sub-token `t` in `text` (read from the Encoding only for the few tokens that start
        or end an entity: copying all offsets out of Rust would cost more than the rest of the host work)."""
        if self.offsets is not None:
            return int(self.offsets[t, 0]), int(self.offsets[t, 1])
        a, b = self.enc.token_to_chars(t)
        if self.word_starts is None:
            return a, b
        base = int(self.word_starts[self.word_ids[t]])
        return base + a, base + b


@dataclass(slots=True)
class Row:
    doc: DocState
    start: int
    end: int
    own_start: int
    own_end: int
    carried: bool = False  # its bucket's tail waited for the next chunk once already
    # Where the batch holds it (`packing`): row `slot`, from column `offset`, as segment `segment` of that row.
    slot: int = 0
    offset: int = 0
    segment: int = 1
    weight: float = 0.0  # > 0: one of several context views, its probabilities added at this weight (`view_rows`)

    @property
    def length(self) -> int:
        return self.end - self.start + 2  # [CLS] ... [SEP]


def rows_for(doc: DocState, size: int, stride: int, context: int = 0, segment: int = 0) -> list[Row]:
    """The windows of one document as batch rows (none for a document without sub-tokens). With `segments` (its
    sentences), a row owns at most `segment` sub-tokens of one sentence (0: `size`; a longer sentence, or a text
    with no sentence marks, is cut into windows of that length overlapping by a quarter) and sees `context` more on
    each side, within `size` in all. With `more_segments` too, the rows of each cut: a row that several cuts plan
    is read once, and each counts the share of the cuts that plan it (`Row.weight`, summed by `scatter`)."""
    if not doc.more_segments:
        return _windows(doc, doc.segments, size, stride, context, segment)
    rows: dict[tuple[int, int, int, int], Row] = {}
    cuts = [doc.segments, *doc.more_segments]
    for segments in cuts:
        for r in _windows(doc, segments, size, stride, context, segment):
            rows.setdefault((r.start, r.end, r.own_start, r.own_end), r).weight += 1 / len(cuts)
    return list(rows.values())


def _windows(doc: DocState, segments: list[int] | None, size: int, stride: int, context: int,
             segment: int) -> list[Row]:
    if segments is None or not segment or segment >= size:
        return [Row(doc, *w) for w in plan_rows(len(doc.ids), size, "windows", stride=stride,
                                                segments=segments, context=context)]
    return [Row(doc, *w) for w in plan_rows(len(doc.ids), segment, "windows", stride=segment // 4,
                                            segments=segments, context=context, total=size)]


def view_rows(rows: list[Row], views: Sequence[str]) -> list[Row]:
    """Each row once per context view (`data.context_views`): `full` as planned, `left` or `right` with only that
    side's context, `none` with only what it owns; each of several views' probabilities counts 1 / len(views)
    of its row's (`scatter`)."""
    if tuple(views) in ((), ("full",)):  # (): a TagConfig not resolved against its run reads as today
        return rows
    drops = [VIEW_DROPS[v] for v in views]  # the sides evaluation's `batching.view_rows` leaves out
    return [Row(r.doc, r.own_start if left else r.start, r.own_end if right else r.end, r.own_start, r.own_end,
                weight=(r.weight or 1.0) / len(views) if len(views) > 1 else r.weight)
            for r in rows for left, right in drops]


def averages(cfg) -> bool:
    """Whether a TagConfig's rows add up probabilities (several context views or sentence cuts): the forward then
    returns every label's probabilities, and a document with label ids reads them at its end."""
    return len(cfg.context_views) > 1 or len(cfg.sentence_thresholds) > 1


def scatter(row: Row, pred: np.ndarray, score: np.ndarray | None) -> bool:
    """Copy one row's predictions for the tokens it owns into its document (a view's row, `weight` > 0: add its
    weighted probabilities); True when the document is complete.

    `pred` is the row's [bucket] label ids (with `score` its [bucket] probabilities) or [bucket, C] probabilities."""
    doc = row.doc
    n = len(doc.ids)
    if doc.pred is None:
        doc.pred = np.zeros((n,) + pred.shape[1:], dtype=pred.dtype)
        if score is not None:
            doc.score = np.zeros(n, dtype=np.float32)
    lo, hi = 1 + row.own_start - row.start, 1 + row.own_end - row.start
    if row.weight:
        doc.pred[row.own_start:row.own_end] += row.weight * pred[lo:hi]
    else:
        doc.pred[row.own_start:row.own_end] = pred[lo:hi]
    if score is not None:
        doc.score[row.own_start:row.own_end] = score[lo:hi]
    doc.pending -= 1
    if doc.pending == 0 and doc.argmax_at_end:
        doc.score, doc.pred = doc.pred.max(-1), doc.pred.argmax(-1).astype(np.int32)
    if doc.pending == 0 and doc.parts is not None:
        split_parts(doc)
    return doc.pending == 0


def join_lines(members: Sequence[DocState], cuts_sentences: bool) -> DocState:
    """One document of several input lines' DocStates (`--document-field`), their sub-tokens end to end for the
    row planner. Each line starts a segment (and so do its sentences when rows keep to sentences), so only a
    policy whose rows run across sentences lets a row own tokens of two lines; either way each line gets its own
    predictions back (`split_parts`) and is released with the document's last row."""
    lens = [len(m.ids) for m in members]
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64).tolist()
    doc = DocState(members[0].index, "", np.concatenate([m.ids for m in members]),
                   np.concatenate([m.word_ids for m in members]))
    doc.parts = list(zip(members, starts, strict=True))
    if cuts_sentences:
        cuts = [[m.segments or [0], *(m.more_segments or [])] for m in members]
        doc.segments, *more = [sorted({a + s for (m, a), c in zip(doc.parts, cuts, strict=True) if len(m.ids)
                                       for s in c[min(j, len(c) - 1)]}) for j in range(max(map(len, cuts)))]
        doc.more_segments = more or None
    for m in members:
        m.pending = 1  # until the joined document is complete
    return doc


def split_parts(doc: DocState) -> None:
    """Hand each line of a joined document its predictions (views into the joined arrays) and release it."""
    for m, a in doc.parts:
        n = len(m.ids)
        if doc.pred is not None:
            m.pred = doc.pred[a:a + n]
            m.score = None if doc.score is None else doc.score[a:a + n]
        m.pending = 0


def entities(doc: DocState, labels: Sequence[str], aggregation: str = "first") -> list[dict]:
    """Word labels from sub-token predictions (`first`, `average` or `max`), IOB2 word tags -> spans with
    character offsets into the original text and the mean word probability as score."""
    return entities_many([doc], labels, aggregation)[0]


def entities_many(docs: Sequence[DocState], labels: Sequence[str], aggregation: str = "first") -> list[list[dict]]:
    """`entities` of many documents at once: their tokens are laid end to end so that each step is one numpy call
    for all of them (words never cross documents, and a document's first word always starts a new span)."""
    out: list[list[dict]] = [[] for _ in docs]
    keep = [i for i, d in enumerate(docs) if len(d.ids)]
    docs = [docs[i] for i in keep]
    if not docs:
        return out
    lens = np.array([len(d.ids) for d in docs])
    doc_start = np.concatenate(([0], np.cumsum(lens)[:-1]))
    n = int(lens.sum())
    w = np.concatenate([d.word_ids for d in docs])
    pred = np.concatenate([d.pred for d in docs])
    new_word = np.empty(n, dtype=bool)
    new_word[0] = True
    np.not_equal(w[1:], w[:-1], out=new_word[1:])
    new_word[doc_start] = True
    first = np.flatnonzero(new_word)  # first sub-token of each word
    bounds = np.append(first, n)
    if aggregation == "first":
        word_label = pred[first]
        word_score = np.concatenate([d.score for d in docs])[first]
    elif aggregation == "average":
        mean = np.add.reduceat(pred, first, axis=0) / np.diff(bounds)[:, None]
        word_label, word_score = mean.argmax(-1), mean.max(-1)
    elif aggregation == "max":
        best = pred.max(-1)
        word_best = np.maximum.reduceat(best, first)
        word_of = np.cumsum(new_word) - 1
        hits = np.flatnonzero(best == word_best[word_of])
        pick = hits[np.unique(word_of[hits], return_index=True)[1]]  # each word's first sub-token at its max
        word_label, word_score = pred[pick].argmax(-1), best[pick]
    else:
        raise ValueError(f"aggregation: expected first, average or max, got {aggregation!r}")
    doc_first_word = np.zeros(len(first), dtype=bool)
    doc_first_word[np.searchsorted(first, doc_start)] = True
    spans = spans_from_ids(word_label, labels, doc_first_word)
    if not spans:
        return out
    cum = np.concatenate(([0.0], np.cumsum(word_score, dtype=np.float64)))
    a_word, b_word = np.array([a for _, a, _ in spans]), np.array([b for _, _, b in spans])
    mean = ((cum[b_word] - cum[a_word]) / (b_word - a_word)).tolist()  # a span's mean word probability
    a_tok, b_tok = first[a_word], bounds[b_word] - 1  # its first and last sub-token, laid end to end
    owner = np.searchsorted(doc_start, a_tok, side="right") - 1
    for (typ, _, _), k, ta, tb, score in zip(spans, owner.tolist(), (a_tok - doc_start[owner]).tolist(),
                                             (b_tok - doc_start[owner]).tolist(), mean, strict=True):
        doc = docs[k]
        s, e = doc.token_chars(ta)[0], doc.token_chars(tb)[1]
        s = e - len(doc.text[s:e].lstrip())  # SentencePiece's `▁word` offsets start at the space before the word
        out[keep[k]].append({"text": doc.text[s:e], "label": typ, "start": s, "end": e, "score": round(score, 5)})
    return out


def encode(backend, chunk: list, words: str = "tokenizer", context: str = "document", sentences=None,
           thresholds: Sequence[float] = ()) -> list[tuple]:
    """Tokenize the texts of a chunk of records in one Rust call (again one by one if that fails, so that only the
    failing line fails): (record, DocState) pairs, None for records with an error. The encodings are merged into
    one before they are read, so Python converts one long list per field, not short ones per record; character
    offsets stay in each record's Encoding until an entity needs them.

    `words`: "tokenizer" reads labels from the tokenizer's pre-tokenizer words (as HF's pipeline does); "conll"
    splits each text with `flaxner.data.words.split_words` first, the words CoNLL-style training data has.
    `context`: under a policy that keeps rows to sentences (`rows.cuts_sentences`), each text's sentences are found
    (`DocState.segments`), so that no row owns tokens of two: by `words.sentence_starts`, or by `sentences` (the
    run's `flaxner.data.sentences.SentenceModel`) when given, at each of `thresholds` (several: `more_segments`;
    none: the model's own)."""
    todo = [r for r in chunk if r.error is None]
    if words == "conll":
        from flaxner.data.words import split_words

        spans = [split_words(r.text) for r in todo]
        inputs = [[r.text[a:b] for a, b in sp] for r, sp in zip(todo, spans, strict=True)]
        kw = {"is_pretokenized": True, "add_special_tokens": False}
    elif words == "tokenizer":
        spans, inputs, kw = None, [r.text for r in todo], {"add_special_tokens": False}
    else:
        raise ValueError(f"words: expected conll or tokenizer, got {words!r}")
    try:
        encs = backend.encode_batch(inputs, **kw)
    except Exception:
        encs = []
        for r, x in zip(todo, inputs, strict=True):
            try:
                encs.append(backend.encode(x, **kw))
            except Exception as e:
                r.error = f"line {r.line}: the tokenizer failed ({type(e).__name__}: {e})"
                encs.append(None)
    starts = [None] * len(todo) if spans is None else [np.array([a for a, _ in sp], dtype=np.int64) for sp in spans]
    word_spans = [None] * len(todo) if spans is None else spans
    good = [(r, e, st, sp) for r, e, st, sp in zip(todo, encs, starts, word_spans, strict=True) if e is not None]
    docs = {}
    if good:
        merged = Encoding.merge([e for _, e, _, _ in good], growing_offsets=False)
        ends = np.cumsum([len(e) for _, e, _, _ in good]).tolist()
        ids = np.array(merged.ids, dtype=np.int32)
        wids = merged.word_ids
        word_ids = np.array(wids if None not in wids else [-1 if w is None else w for w in wids], dtype=np.int32)
        a = 0
        for (r, e, st, sp), b in zip(good, ends, strict=True):
            doc = docs[id(r)] = DocState(r.line, r.text, ids[a:b], word_ids[a:b], enc=e, word_starts=st)
            if cuts_sentences(context):
                doc.segments, *more = _sentence_segments(doc, sp, sentences, thresholds)
                doc.more_segments = more if any(c != doc.segments for c in more) else None  # each cut counts
            a = b
    return [(r, docs.get(id(r))) for r in chunk]


def _sentence_segments(doc: DocState, spans: list[tuple[int, int]] | None, sentences=None,
                       thresholds: Sequence[float] = ()) -> list[list[int]]:
    """The first sub-token of each sentence of `doc`, for each cut into sentences. `spans`: its CoNLL-style words
    when the tokenizer was given those (its word ids then count them); None: find the words, then map each
    sentence's first character to the sub-token holding it. `sentences`: a SentenceModel whose starts at each of
    `thresholds` (none: its own) replace `words.sentence_starts`."""
    from flaxner.data.words import sentence_starts, split_words

    if not len(doc.ids):
        return [[]]
    words = spans if spans is not None else split_words(doc.text)
    if sentences is None:
        cuts = [sentence_starts(doc.text, words)]
    else:
        cuts = sentences.segmentations(doc.text, words, thresholds or (sentences.threshold,))
    # thresholds often cut alike: each distinct cut is mapped to sub-tokens once
    to_tokens = (lambda c: sentence_token_starts(doc.word_ids, c)) if spans is not None else \
        (lambda c: _char_starts(doc, words, c))
    mapped = {c: to_tokens(list(c)) for c in dict.fromkeys(map(tuple, cuts))}
    return [mapped[tuple(c)] for c in cuts]


def _char_starts(doc: DocState, spans: list[tuple[int, int]], starts: list[int]) -> list[int]:
    out = [0]
    for k in starts[1:]:
        t = None
        for c in range(spans[k][0], spans[k][1]):  # a character the normaliser dropped has no sub-token
            t = doc.enc.char_to_token(c)
            if t is not None:
                break
        if t is not None and t > out[-1]:
            out.append(t)
    return out
