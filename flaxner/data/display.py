"""Entities to look at: text with each entity highlighted per label (scores on hover), for the notebook
(`tagged_html`, `worst_html`), the model card's sample predictions (`worst_html` in the card, `samples_page`) and
`flaxner tag --format html` (`html_page`: a self-contained page with a count per label). One renderer,
`highlight_html`, for all of them; below training and tagging alike, it imports no JAX."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from flaxner.data.labels import spans_from_tags

# Fixed colours for the CoNLL types; other labels take the next free colour of the palette.
TYPE_COLORS = {"PER": "#ffd166", "ORG": "#8ecae6", "LOC": "#95d5b2", "MISC": "#e5b3fe"}
PALETTE = ("#f4a261", "#bde0fe", "#ffafcc", "#caffbf", "#fdffb6", "#d0d1ff", "#ffc6ff", "#9bf6ff")
PAGE_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table.counts{border-collapse:collapse;margin:1em 0}table.counts td,table.counts th{border:1px solid #ccc;
padding:2px 8px;text-align:right}.doc{border-top:1px solid #eee;padding:.5em 0}.id{color:#888;font-size:80%}
.error{color:#b00020}mark{padding:0 2px;border-radius:3px}"""


def page_head(title: str) -> str:
    """The start of a self-contained page (its style inline, nothing fetched) up to its heading."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")


def words_to_text(tokens: Sequence[str], tags: Sequence[str]) -> tuple[str, list[dict]]:
    """Words joined by spaces, and the spans of IOB2 `tags` as entities with character offsets into that text."""
    starts, pos = [], 0
    for w in tokens:
        starts.append(pos)
        pos += len(w) + 1
    text = " ".join(tokens)
    ents = []
    for t, a, b in spans_from_tags(tags):
        s, e = starts[a], starts[b - 1] + len(tokens[b - 1])
        ents.append({"text": text[s:e], "label": t, "start": s, "end": e})
    return text, ents


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    """A background colour per entity label: the CoNLL ones fixed, others from the palette in order."""
    out, free = {}, iter(PALETTE * (len(labels) // len(PALETTE) + 1))
    for lab in labels:
        out[lab] = TYPE_COLORS.get(lab) or next(free)
    return out


def highlight_html(text: str, entities: Sequence[dict] | dict, colors: dict[str, str] | None = None) -> str:
    """`text` as HTML (escaped, whitespace kept) with each entity's characters text[start:end] inside a coloured
    <mark> followed by its label. Takes a list of entities or a dict holding them under "entities"."""
    if isinstance(entities, dict):
        entities = entities["entities"]
    ents = sorted(entities, key=lambda e: (e["start"], e["end"]))
    colors = {**label_colors(sorted({e["label"] for e in ents})), **(colors or {})}
    parts, pos = [], 0
    for e in ents:
        s, t = int(e["start"]), int(e["end"])
        if not pos <= s < t <= len(text):
            raise ValueError(f"entity {e} overlaps the previous one or lies outside the text of {len(text)} chars")
        title = e["label"] + (f" {e['score']:.3f}" if "score" in e else "")
        parts.append(html.escape(text[pos:s]))
        parts.append(f'<mark style="background:{colors[e["label"]]};padding:0 2px;border-radius:3px" '
                     f'title="{html.escape(title)}">{html.escape(text[s:t])}</mark>'
                     f'<sup style="font-size:70%;font-weight:bold">{html.escape(e["label"])}</sup>')
        pos = t
    parts.append(html.escape(text[pos:]))
    return f'<div style="white-space:pre-wrap;line-height:1.9">{"".join(parts)}</div>'


def tagged_html(texts: Sequence[str], results: Sequence[Sequence[dict] | dict]) -> str:
    """Several texts with their entities (as `Tagger.tag` returns them), one highlighted block each."""
    labels = sorted({e["label"] for r in results for e in (r["entities"] if isinstance(r, dict) else r)})
    colors = label_colors(labels)
    legend = " ".join(f'<mark style="background:{colors[lab]}">{html.escape(lab)}</mark>' for lab in labels)
    blocks = [f"<p><b>{i}</b> ({len(t)} chars)</p>{highlight_html(t, r, colors)}"
              for i, (t, r) in enumerate(zip(texts, results, strict=True))]
    return f"<div>{legend}</div>" + "<hr>".join(blocks)


def worst_html(items: Sequence[dict]) -> str:
    """Sentences (`index`, `errors`, `tokens`, `gold_tags`, `pred_tags`: `worst_sentences`' items, the card's
    samples) as an HTML table on one line: gold and predicted spans highlighted side by side, a label one colour."""
    texts = [[words_to_text(it["tokens"], it[k]) for k in ("gold_tags", "pred_tags")] for it in items]
    colors = label_colors(sorted({e["label"] for pair in texts for _, ents in pair for e in ents}))
    rows = []
    for it, pair in zip(items, texts, strict=True):
        cells = [highlight_html(text, ents, colors) for text, ents in pair]
        rows.append(f"<tr><td>{it['index']}</td><td>{it['errors']}</td>"
                    f'<td style="text-align:left">{cells[0]}</td><td style="text-align:left">{cells[1]}</td></tr>')
    return ("<table><tr><th>sentence</th><th>errors</th><th>gold</th><th>predicted</th></tr>"
            + "".join(rows) + "</table>")


def html_page(records: Iterable[dict], f: BinaryIO, title: str) -> dict:
    """A self-contained HTML page of tagged records (`formats.staged_line`'s: line, id, text, entities or error):
    a table of entities per label, then each text highlighted; a record with an error shows the error."""
    counts: Counter = Counter()
    blocks, n = [], 0
    for d in records:
        n += 1
        head = f'<div class="doc" data-line="{d["line"]}"><span class="id">{html.escape(str(d["id"]))}</span>'
        if "error" in d:
            blocks.append(f'{head}<div class="error">{html.escape(d["error"])}</div></div>')
            continue
        counts.update(e["label"] for e in d["entities"])
        blocks.append((head, d["text"], d["entities"]))  # rendered once every label's colour is known
    colors = label_colors(sorted(counts))
    rows = "".join(f'<tr><td style="text-align:left"><mark style="background:{colors[lab]}">{html.escape(lab)}'
                   f"</mark></td><td>{k}</td></tr>" for lab, k in sorted(counts.items()))
    f.write((f"{page_head(title)}<p>{n} texts, {sum(counts.values())} entities (hover over one for its score)</p>"
             f'<table class="counts"><tr><th>label</th><th>entities</th></tr>{rows}</table>\n').encode())
    for b in blocks:
        part = b if isinstance(b, str) else f"{b[0]}{highlight_html(b[1], b[2], colors)}</div>"
        f.write((part + "\n").encode("utf-8", "surrogatepass"))
    f.write(b"</body></html>\n")
    return {"written": n, "entities": dict(counts)}


def samples_page(items: Sequence[dict], title: str, intro: str) -> str:
    """A self-contained page of `worst_html`'s table under `intro` (plain text): the model card's samples.html."""
    return f"{page_head(title)}<p>{html.escape(intro)}</p>\n{worst_html(items)}\n</body></html>\n"
