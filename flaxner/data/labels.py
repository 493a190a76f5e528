"""Label inventory, word-tag to sub-token alignment, and IOB2 tags to spans."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# The hub's conll2003 `ner_tags` order; label ids are positions in this list.
CONLL_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
IGNORE = -100


def label2id(labels: Sequence[str] = CONLL_LABELS) -> dict[str, int]:
    """Map each tag to its id."""
    return {lab: i for i, lab in enumerate(labels)}


def b_to_i(labels: Sequence[str]) -> np.ndarray:
    """For each label id, the id of its I- twin (itself for O and I- tags), for `label_all_tokens`."""
    ids = label2id(labels)
    return np.array([ids.get("I-" + lab[2:], i) if lab.startswith("B-") else i for i, lab in enumerate(labels)])


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int],
                 label_all_tokens: bool = False, b_to_i_map: np.ndarray | None = None) -> list[int]:
    """Word-level label ids -> one id per sub-token: the first sub-token of a word gets the word's label, the rest
    IGNORE (or the label with B- turned into I- when `label_all_tokens`); special tokens get IGNORE."""
    out: list[int] = []
    prev = None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != prev:
            out.append(int(word_labels[w]))
        elif label_all_tokens:
            lab = int(word_labels[w])
            out.append(int(b_to_i_map[lab]) if b_to_i_map is not None else lab)
        else:
            out.append(IGNORE)
        prev = w
    return out


def spans_from_tags(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """IOB2 tags -> (type, first, last+1) word spans, read as seqeval's default mode reads them: a stray I- (or an
    I- of another type) starts a new span."""
    spans: list[tuple[str, int, int]] = []
    cur_type, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, typ = tag.partition("-")
        if cur_type is not None and (prefix in ("O", "B") or typ != cur_type):
            spans.append((cur_type, start, i))
            cur_type = None
        if prefix in ("B", "I") and cur_type is None:
            cur_type, start = typ, i
    return spans


@functools.lru_cache(maxsize=32)
def _tag_table(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Per label id: 1 for B-, 2 for I-, 0 otherwise; its entity type's index (-1 for none); the types."""
    split = [lab.partition("-") for lab in labels]
    types = tuple(sorted({typ for prefix, _, typ in split if prefix in ("B", "I")}))
    prefix = np.array([{"B": 1, "I": 2}.get(p, 0) for p, _, _ in split], dtype=np.int8)
    type_id = np.array([types.index(t) if p in ("B", "I") else -1 for p, _, t in split], dtype=np.int32)
    return prefix, type_id, types


def spans_from_ids(label_ids: np.ndarray, labels: Sequence[str],
                   cut: np.ndarray | None = None) -> list[tuple[str, int, int]]:
    """`spans_from_tags` on label ids, vectorized: the same spans for the same tags. Where `cut` is True a new
    sequence begins (no span runs across it): many sequences laid end to end are read as each on its own."""
    prefix, type_id, types = _tag_table(tuple(labels))
    p, t = prefix[label_ids], type_id[label_ids]
    ent = p > 0
    if not ent.any():
        return []
    start = ent.copy()
    start[1:] &= (p[1:] == 1) | ~ent[:-1] | (t[1:] != t[:-1])
    stop = ~ent
    if cut is not None:
        start |= ent & cut
        stop |= cut
    starts = np.flatnonzero(start)
    stops = np.flatnonzero(start | stop).tolist() + [len(p)]  # a span runs to the next start, O or cut
    ends = np.asarray(stops)[np.searchsorted(stops, starts, side="right")].tolist()
    return [(types[k], a, b) for k, a, b in zip(t[starts].tolist(), starts.tolist(), ends, strict=True)]


def check_labels(model_labels: Sequence[str], data_labels: Sequence[str]) -> None:
    """Refuse a model whose label map cannot express the data's tags."""
    missing = sorted(set(data_labels) - set(model_labels))
    if missing:
        raise ValueError(f"the model's label map {list(model_labels)} lacks the data's tags {missing}")


def detect_scheme(tag_seqs: Sequence[Sequence[str]]) -> str:
    """The scheme a set of tag sequences is written in: "bioes" (E-/S-, or BILOU's L-/U-); "iob2" when some span
    opens with B- after O or another type (a stray I- then is an annotation slip, read as seqeval reads it);
    "iob1" when B- only separates adjacent same-type spans; "io" with I- and O only (read as IOB1)."""
    seen_b = b_opens = False
    for tags in tag_seqs:
        prev_type = ""
        for tag in tags:
            p, _, typ = tag.partition("-")
            if p in ("E", "S", "L", "U"):
                return "bioes"
            if p == "B":
                seen_b = True
                b_opens = b_opens or typ != prev_type
            prev_type = typ if p in ("B", "I") else ""
    if b_opens:
        return "iob2"
    return "iob1" if seen_b else ("io" if any(t != "O" for tags in tag_seqs for t in tags) else "iob2")


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Tags of one sentence in `scheme` -> IOB2, with the spans seqeval's default (conlleval) mode reads in the
    original (BILOU's L-/U- are BIOES's E-/S-). IOB2 input is returned as given."""
    if scheme == "iob2":
        return list(tags)
    tags = [{"L": "E", "U": "S"}.get(t[:1], t[:1]) + t[1:] if t[1:2] == "-" else t for t in tags]
    out = ["O"] * len(tags)
    for typ, a, b in conlleval_spans(tags):
        out[a] = f"B-{typ}"
        out[a + 1:b] = [f"I-{typ}"] * (b - a - 1)
    return out


# conlleval's chunk rules for (previous prefix, prefix) pairs, beyond a change of type and E-/S- closing a chunk
_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def conlleval_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last+1) spans of B-/I-/E-/S-/O tags in any scheme, by conlleval's chunk rules as seqeval's
    default mode applies them (its `get_entities`; tests/test_labels.py compares the two on random tags)."""
    spans: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, typ = chunk[0], chunk[1:].split("-", 1)[-1] or "_"
        if prev_tag in ("E", "S") or (prev_tag, tag) in _ENDS or (prev_tag not in ("O", ".") and prev_type != typ):
            spans.append((prev_type, begin, i))
        if tag in ("B", "S") or (prev_tag, tag) in _STARTS or (tag not in ("O", ".") and prev_type != typ):
            begin = i
        prev_tag, prev_type = tag, typ
    return spans


def from_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """IOB2 tags -> `scheme` (for tests and for exporting data): the inverse of `to_iob2` except that "io" merges
    adjacent spans of one type (IO has no way to mark the boundary)."""
    if scheme == "iob2":
        return list(tags)
    spans = spans_from_tags(tags)
    out = ["O"] * len(tags)
    for k, (typ, a, b) in enumerate(spans):
        if scheme == "bioes":
            out[a:b] = [f"S-{typ}"] if b - a == 1 else [f"B-{typ}", *[f"I-{typ}"] * (b - a - 2), f"E-{typ}"]
        elif scheme in ("iob1", "io"):
            out[a:b] = [f"I-{typ}"] * (b - a)
            if scheme == "iob1" and k and spans[k - 1][2] == a and spans[k - 1][0] == typ:
                out[a] = f"B-{typ}"
        else:
            raise ValueError(f"scheme: expected iob2, iob1, bioes or io, got {scheme!r}")
    return out


def iob2_inventory(tags: Sequence[str]) -> tuple[str, ...]:
    """The IOB2 label inventory of a set of tags in any scheme, deterministic: `O` first, then B-X, I-X per entity
    type sorted by name; a tag set equal to CoNLL-2003's keeps the hub's order (CONLL_LABELS)."""
    types = sorted({t.partition("-")[2] for t in tags if t != "O" and t[1:2] == "-"})
    out = ("O", *[f"{p}-{typ}" for typ in types for p in ("B", "I")])
    return CONLL_LABELS if set(out) == set(CONLL_LABELS) else out


def iob2_names(names: Sequence[str]) -> tuple[str, ...]:
    """A given label list (a hub ClassLabel, `data.labels`) as IOB2 names: IOB2 lists are kept as given; others
    become O then B-X, I-X per type in the order the types first appear."""
    if all(n == "O" or n[:2] in ("B-", "I-") for n in names) and "O" in names:
        return tuple(names)
    out = ["O"]
    for n in names:
        typ = n.partition("-")[2]
        if n != "O" and f"B-{typ}" not in out:
            out += [f"B-{typ}", f"I-{typ}"]
    return tuple(out)
