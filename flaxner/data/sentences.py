"""Sentence starts that carry no mark, learnt from a training set's documents.

`words.sentence_starts` ends a sentence at `.`, `!`, `?`, a list number or a blank line. Newswire documents run
together as text hide half of CoNLL-2003's sentence ends from those rules: headlines, bylines, datelines
(`ROME 1996-12-06 Italy recalled ...`) and table rows (`Japan 2 Syria 1 ...`). A model trained on single sentences
reads those run together and tags them worse. `SentenceModel` is a logistic regression over the shapes and frequent
words on each side of a gap between two words and the classes of the words around it, fitted (`fit`) on the
training documents laid out as the tagger sees them (sentences joined by single spaces), on the gaps the rules
leave, so that the tagger finds the sentences the way the training data was split. A run saves it as
`sentences.json` (weights only: no code) when its training data has documents; the tagger adds its starts to the
rules' (`starts`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from flaxner.data.words import sentence_starts, split_words

FILE = "sentences.json"
EDGE = "<s>"  # the word before a text's first and after its last
VERSION = 1
_RUNS = re.compile(r"(.)\1{2,}")


@functools.lru_cache(maxsize=1 << 16)
def shape(w: str) -> str:
    """`Xxxx`-style shape with runs of three or more cut to two: `Japan` -> `Xxx`, `1996-12-06` -> `dd-dd-dd`."""
    return _RUNS.sub(r"\1\1", "".join("X" if c.isupper() else "x" if c.isalpha() else "d" if c.isdigit() else c
                                       for c in w))


def word_keys(words: Sequence[str], vocab: frozenset[str] | set[str]) -> tuple[list[str], list[str], str]:
    """Each word's shape, its lexical key (the word lowercased if frequent, else `~` and its shape) and its class
    (`X` capitalised, `x` lower case, `d` a number, `p` anything else, `<` the edge), padded on both sides with two
    of the text edge's (`<s>`, a word of its own): what `gap_features` reads."""
    shapes = [shape(w) for w in [EDGE, *words, EDGE]]
    lexes = [w if w in vocab else "~" + s for w, s in zip((w.lower() for w in [EDGE, *words, EDGE]), shapes, strict=True)]
    classes = "".join(s[0] if s[0] in "Xxd" else "p" for s in shapes[1:-1])
    return shapes[:1] + shapes + shapes[-1:], lexes[:1] + lexes + lexes[-1:], "<<" + classes + "<<"


def gap_features(keys: tuple[list[str], list[str], str], k: int) -> list[str]:
    """The features of the gap before word `k` (`keys` from `word_keys`): the words (frequent ones) or shapes on
    each side, shape pairs and a triple around it (`word_features`), and the classes of the words around it
    (`class_features`)."""
    return word_features(keys, k) + class_features(keys[2], k)


def word_features(keys: tuple[list[str], list[str], str], k: int) -> list[str]:
    shapes, lexes, _ = keys
    sp2, sp1, sn1, sn2 = shapes[k:k + 4]
    lp, ln = lexes[k + 1], lexes[k + 2]
    return [f"p={lp}", f"n={ln}", f"s={sp1}|{sn1}", f"t={sp2}|{sp1}|{sn1}", f"ps={lp}|{sn1}", f"sn={sp1}|{ln}",
            f"nn={sn1}|{sn2}", f"pn={lp}|{ln}"]


def class_features(classes: str, k: int) -> list[str]:
    """The classes of up to seven words before the gap and two after it, which read a results table's rows
    (`Crystal Palace 2 Oxford 2 | Huddersfield`, `JACKSONVILLE 6 7 0 263 288 | CINCINNATI`). They depend on
    `classes[max(0, k - 5):k + 4]` alone (`SentenceModel` keeps their weight by it)."""
    c7, c5, c3, n1, n2 = (classes[max(0, k - 5):k + 2], classes[max(0, k - 3):k + 2], classes[k - 1:k + 2],
                          classes[k + 2], classes[k + 2:k + 4])
    return [f"c7={c7}|{n1}", f"c5={c5}|{n1}", f"c3={c3}|{n1}", f"c5n2={c5}|{n2}", f"c3n2={c3}|{n2}"]


class SentenceModel:
    """Weights of gap features; a gap whose probability passes `threshold` starts a sentence."""

    def __init__(self, vocab: Iterable[str], weights: dict[str, float], bias: float, threshold: float = 0.5,
                 fitted: dict | None = None):
        self.vocab, self.weights, self.bias, self.threshold = frozenset(vocab), weights, bias, threshold
        self.fitted = fitted or {}
        self._by_classes: dict[str, float] = {}  # the weight of `class_features` by the classes they read

    def starts(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """`words.sentence_starts` and the gaps this model finds (word indices into `spans`, 0 first)."""
        return self.segmentations(text, spans, (self.threshold,))[0]

    def segmentations(self, text: str, spans: list[tuple[int, int]], thresholds: Sequence[float]) -> list[list[int]]:
        """`starts` with each of `thresholds` in place of the model's own (one pass over the gaps)."""
        rules = sentence_starts(text, spans)
        if len(spans) < 2:
            return [rules for _ in thresholds]
        keys = word_keys([text[a:b] for a, b in spans], self.vocab)
        have = set(rules)
        w, b, classes, cached = self.weights, self.bias, keys[2], self._by_classes
        gaps, logits = [], []
        for k in range(1, len(spans)):
            if k in have:
                continue
            around = classes[max(0, k - 5):k + 4]
            if (z := cached.get(around)) is None:
                z = cached[around] = sum(w.get(f, 0.0) for f in class_features(classes, k))
            gaps.append(k)
            logits.append(b + z + sum(w.get(f, 0.0) for f in word_features(keys, k)))
        return [sorted(have.union(k for k, z in zip(gaps, logits, strict=True) if z > cut))
                for cut in [math.log(t / (1 - t)) for t in thresholds]]

    def to_json(self) -> dict:
        return {"version": VERSION, "threshold": self.threshold, "bias": self.bias, "fitted": self.fitted,
                "vocab": sorted(self.vocab), "weights": self.weights}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SentenceModel:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d.get("version") != VERSION:
            raise ValueError(f"{path}: sentence model version {d.get('version')!r}, this flaxner reads {VERSION}")
        return cls(d["vocab"], {str(k): float(v) for k, v in d["weights"].items()}, float(d["bias"]),
                   float(d["threshold"]), d.get("fitted"))


def load_for(model_dir: str | Path) -> SentenceModel | None:
    """A run folder's sentence model (its `sentences.json`), None without one (a run fitted none, or a bare model
    folder)."""
    p = Path(model_dir) / FILE
    return SentenceModel.load(p) if p.is_file() else None


def document_gaps(documents: Iterable[Sequence[Sequence[str]]]) -> list[tuple[list[str], set[int], list[int]]]:
    """Each document (its sentences' words) as the tagger reads it: its words from the text of the sentences
    joined by single spaces, the gold sentence starts among them, and the gaps the rules leave."""
    out = []
    for sentences in documents:
        text = " ".join(" ".join(ws) for ws in sentences if ws)
        spans = split_words(text)
        first = {a: k for k, (a, _) in enumerate(spans)}
        gold, pos = set(), 0
        for ws in sentences:
            if ws:
                if pos in first:
                    gold.add(first[pos])
                pos += len(" ".join(ws)) + 1
        rules = set(sentence_starts(text, spans))
        out.append(([text[a:b] for a, b in spans], gold, [k for k in range(1, len(spans)) if k not in rules]))
    return out


def _first_words(documents: Iterable[Sequence[Sequence[str]]], limit: int):
    """The documents up to `limit` words in all (the first one whatever its size)."""
    seen = 0
    for d in documents:
        n = sum(map(len, d))
        if seen and seen + n > limit:
            return
        seen += n
        yield d


def fit(documents: Iterable[Sequence[Sequence[str]]], *, min_count: int = 30, min_starts: int = 50, c: float = 1.0,
        prune: float = 1e-3, max_words: int = 1_000_000) -> SentenceModel | None:
    """Fit on documents (each a list of sentences, each a list of words; the first `max_words` words' worth, which
    bounds the time: about 10 s for CoNLL-2003's 204k): an L2-regularised logistic regression over the gaps the
    rules leave (inverse strength `c`, as scikit-learn's `C`), by scipy's L-BFGS (scipy comes with JAX). None when
    the documents hold fewer than `min_starts` sentence starts the rules miss (nothing to learn: sentence-per-
    document data, or text whose sentences all end in a mark)."""
    from scipy.optimize import minimize

    docs = document_gaps(_first_words(documents, max_words))
    if sum(len(gold.intersection(gaps)) for _, gold, gaps in docs) < min_starts:
        return None
    counts = Counter(w.lower() for words, _, _ in docs for w in words)
    vocab = frozenset(w for w, n in counts.items() if n >= min_count)
    index: dict[str, int] = {}
    rows, y = [], []
    for words, gold, gaps in docs:
        keys = word_keys(words, vocab)
        for k in gaps:
            rows.append([index.setdefault(f, len(index)) for f in gap_features(keys, k)])
            y.append(k in gold)
    x, t = np.asarray(rows, dtype=np.int64), np.asarray(y, dtype=np.float64)
    flat, n = x.ravel(), len(index)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:  # c * summed log loss + |w|^2 / 2, bias free
        w, b = theta[:n], theta[n]
        z = w[x].sum(1) + b
        err = 1 / (1 + np.exp(-z)) - t
        value = c * float(np.sum(np.logaddexp(0, z) - t * z)) + 0.5 * float(w @ w)
        grad = np.empty(n + 1)
        grad[:n] = c * np.bincount(flat, weights=np.repeat(err, x.shape[1]), minlength=n) + w
        grad[n] = c * err.sum()
        return value, grad

    theta = minimize(loss, np.zeros(n + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    names = list(index)
    keep = np.flatnonzero(np.abs(theta[:n]) >= prune)
    fitted = {"documents": len(docs), "gaps": len(t), "starts": int(t.sum()), "features": len(keep)}
    return SentenceModel(vocab, {names[i]: round(float(theta[i]), 5) for i in keep}, round(float(theta[n]), 5),
                         fitted=fitted)


def fit_columns(cols) -> SentenceModel | None:
    """`fit` on a split's columns (`tokens`, `document`: consecutive sentences with one id are one document); None
    for data without documents."""
    docs: dict[int, list] = {}
    for words, doc in zip(cols["tokens"], cols.get("document") or (), strict=False):
        docs.setdefault(doc, []).append(words)
    return fit(docs.values()) if len(docs) > 1 else None


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m flaxner.data.sentences RUN`: fit the sentence model of a run made before runs fitted one, from
    its training split as its config.yaml names it, into RUN/sentences.json (a run that has one keeps it)."""
    import argparse

    from flaxner.config import load_config
    from flaxner.data.splits import load_dataset_splits
    from flaxner.rundir import RunDir

    p = argparse.ArgumentParser(prog="python -m flaxner.data.sentences", description=main.__doc__)
    p.add_argument("run", help="a flaxner run folder (config.yaml)")
    rd = RunDir(Path(p.parse_args(argv).run))
    if not rd.config.is_file():
        raise SystemExit(f"{rd.path}: not a run folder (no config.yaml)")
    if rd.sentences.exists() or rd.sentences.is_symlink():
        raise SystemExit(f"{rd.sentences}: already there; remove it to fit again")
    d = load_config(rd.config).data
    ds, _ = load_dataset_splits(d, [d.train_split], labels=d.labels or None)
    model = fit_columns(ds[d.train_split][:])
    if model is None:
        raise SystemExit(f"{rd.path}: its training data has no documents to learn sentence starts from")
    model.save(rd.sentences)
    print(json.dumps({"sentences": str(rd.sentences), **model.fitted}))


if __name__ == "__main__":
    main()
