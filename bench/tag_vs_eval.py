"""Does tagging raw text score what evaluation on the gold words scores? One trained run, CoNLL-2003 splits:
`flaxner eval` (gold words) against `flaxner tag` on the sentences' text, with the words joined by single spaces
and as running text (no space before `, . ; : ) 's`, none after `(`), tagged with the tokenizer's words
(`--words tokenizer`, as before), with CoNLL-style words (`--words conll`), and through HF's PyTorch
`pipeline(aggregation_strategy="first")` on the same weights (model/model.safetensors). Entities found in the
text are mapped back to the gold words they overlap and scored with seqeval like evaluation.

`--documents` tags each CoNLL-2003 document (`-DOCSTART-`) as one text instead, its sentences joined by spaces, with
each context policy (`--context`: `none` tags its sentences one at a time, `document` lets windows cross them), and
as a sentence-per-line corpus (layout `lines`: one record per sentence, its document's id in a field, tagged with
`--document-field`).

    python -m bench.tag_vs_eval --model /work/runs-h-data/minilm1 --json /tmp/tag_vs_eval.json
    python -m bench.tag_vs_eval --model runs/minilm --documents --no-hf --splits test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import header, markdown_table, write_json
from flaxner.tagging.options import parse_thresholds as sentence_thresholds  # flaxner tag's parser (no JAX)

NO_SPACE_BEFORE = frozenset({",", ".", ";", ":", ")", "'s"})
LAYOUTS = ("spaces", "running")


def join_words(words: list[str], layout: str) -> tuple[str, list[tuple[int, int]]]:
    """The text of a sentence's words in `layout`, and each word's character span in it."""
    parts: list[str] = []
    spans = []
    pos = 0
    for i, w in enumerate(words):
        if i and (layout == "spaces" or (w not in NO_SPACE_BEFORE and words[i - 1] != "(")):
            parts.append(" ")
            pos += 1
        spans.append((pos, pos + len(w)))
        parts.append(w)
        pos += len(w)
    return "".join(parts), spans


def tags_on_words(entities: list[dict], spans: list[tuple[int, int]], type_key: str = "label") -> list[str]:
    """IOB2 tags of the gold words from entities with character offsets: each entity tags the words it
    overlaps (B- on the first); a word claimed by two entities keeps the first."""
    tags = ["O"] * len(spans)
    for e in entities:
        hit = [k for k, (a, b) in enumerate(spans) if a < e["end"] and e["start"] < b and tags[k] == "O"]
        for j, k in enumerate(hit):
            tags[k] = ("B-" if j == 0 else "I-") + e[type_key]
    return tags


def documents_of(split: str, sentences: list[list[str]]) -> list[list[int]]:
    """The sentence indices of each CoNLL-2003 document of the shipped `split`, checked against `sentences` (its
    first sentences, for a run with `data.limit`)."""
    from flaxner.data.splits import BUILTIN_DIR, find_split_file
    from flaxner.data.readers import read_conll

    s = read_conll(find_split_file(BUILTIN_DIR, split))
    if s.tokens[:len(sentences)] != sentences:
        raise SystemExit(f"--documents: the run's {split} split is not the shipped CoNLL-2003 copy")
    docs: dict[int, list[int]] = {}
    for i, d in enumerate(s.documents[:len(sentences)]):
        docs.setdefault(d, []).append(i)
    return list(docs.values())


def join_document(sentences: list[list[str]], layout: str) -> tuple[str, list[list[tuple[int, int]]]]:
    """A document's text (sentences joined by one space) and each sentence's word spans in it."""
    parts, spans, pos = [], [], 0
    for words in sentences:
        text, sp = join_words(words, layout)
        spans.append([(a + pos, b + pos) for a, b in sp])
        parts.append(text)
        pos += len(text) + 1
    return " ".join(parts), spans


def tag_lines(tagger, docs: list[list[int]], sentences: list[list[str]], n: int) -> list[list[str]]:
    """Each sentence one record (its words joined by spaces) carrying its document's index, as a sentence-per-line
    JSONL corpus tagged with `--document-field`; the predicted tags of each sentence's words."""
    from flaxner.tagging.reading import Record

    order = [i for d in docs for i in d]
    doc_of = {i: k for k, d in enumerate(docs) for i in d}
    texts = [join_words(words, "spaces") for words in sentences]
    records = [Record(line=j + 1, id=i, text=t, document=doc_of[i]) for j, (i, (t, _)) in enumerate(zip(order, texts))]
    pred: list[list[str]] = [[] for _ in range(n)]
    for rec, ents in tagger.stream(records):
        pred[rec.id] = tags_on_words(ents, texts[rec.line - 1][1])
    return pred


def run_data(model: str):
    """The run's data section (its context policy: what `flaxner eval` scores with), None for a bare HF folder."""
    from flaxner.config import load_config
    from flaxner.rundir import RunDir

    path = RunDir(model).config
    return load_config(path).data if path.is_file() else None


def run_documents(args) -> dict:
    """Each document as one text, tagged with each context policy; F1 on the gold words beside `flaxner eval`."""
    from flaxner.training.evaluate import compute_metrics, predict_split
    from flaxner.models.loading import load_trained
    from flaxner.tagging.tagger import Tagger

    loaded = load_trained(args.model)
    out, rows = {"model": args.model, "splits": {}}, []
    extra = {"segment_length": args.segment_length} if args.segment_length is not None else {}
    if args.sentence_thresholds is not None:
        extra["sentence_thresholds"] = args.sentence_thresholds
    views = tuple(args.context_views.split(",")) if args.context_views else None
    taggers = {c: Tagger.from_pretrained(args.model, words="conll", context=c, document_field="document", **extra,
                                         **({"context_views": views} if views and c == "neighbours" else {}))
               for c in args.context}
    for split in args.splits:
        ev = predict_split(loaded, split=split, limit=args.limit, data=run_data(args.model), views=views)
        docs = documents_of(split, ev.tokens)
        res = {"eval": ev.metrics["f1"], "sentences": len(ev.gold), "documents": len(docs)}
        for layout in (*LAYOUTS, "lines"):
            joined = [join_document([ev.tokens[i] for i in d], "spaces" if layout == "lines" else layout)
                      for d in docs]
            for c, tagger in taggers.items():
                t0, windows = time.perf_counter(), tagger.stats.windows
                pred: list[list[str]] = [[] for _ in ev.gold]
                if layout == "lines":
                    pred = tag_lines(tagger, docs, [ev.tokens[i] for d in docs for i in d], len(ev.gold))
                else:
                    ents = tagger.tag([t for t, _ in joined])
                    for d, e, (_, spans) in zip(docs, ents, joined):
                        tags = tags_on_words(e, [w for sp in spans for w in sp])
                        for i, sp in zip(d, spans):
                            pred[i], tags = tags[:len(sp)], tags[len(sp):]
                seconds = time.perf_counter() - t0
                res[f"tag_{c}_{layout}"] = compute_metrics(ev.gold, pred)["f1"]
                res[f"seconds_{c}_{layout}"] = round(seconds, 2)
                res[f"rows_{c}_{layout}"] = tagger.stats.windows - windows  # model rows read (windows, views, cuts)
                rows.append({"split": split, "layout": layout, "context": c, "eval": 100 * res["eval"],
                             "tag": 100 * res[f"tag_{c}_{layout}"],
                             "gap": 100 * (res[f"tag_{c}_{layout}"] - res["eval"])})
        out["splits"][split] = res
        print(json.dumps({split: res}), flush=True)
    out["table"] = markdown_table(rows, [("split", "split", ""), ("layout", "text layout", ""),
                                         ("context", "tag context", ""), ("eval", "flaxner eval F1", ".2f"),
                                         ("tag", "tag documents F1", ".2f"), ("gap", "tag - eval", "+.2f")])
    return out


def run(args) -> dict:
    from flaxner.training.evaluate import predict_split
    from flaxner.training.evaluate import compute_metrics
    from flaxner.models.loading import load_trained
    from flaxner.tagging.tagger import Tagger

    loaded = load_trained(args.model)
    rows, out = [], {"model": args.model, "splits": {}}
    pipe = None
    if not args.no_hf:
        from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

        mdir = str(Path(args.model) / "model") if (Path(args.model) / "model").is_dir() else args.model
        pt = AutoModelForTokenClassification.from_pretrained(mdir).eval()
        pipe = pipeline("token-classification", model=pt, tokenizer=AutoTokenizer.from_pretrained(mdir),
                        aggregation_strategy="first", device="cpu")
    taggers = {w: Tagger.from_pretrained(args.model, words=w) for w in ("tokenizer", "conll")}
    for split in args.splits:
        t0 = time.perf_counter()
        ev = predict_split(loaded, split=split, limit=args.limit, data=run_data(args.model))
        res = {"eval": ev.metrics["f1"], "sentences": len(ev.gold)}
        for layout in LAYOUTS:
            joined = [join_words(ws, layout) for ws in ev.tokens]
            texts = [t for t, _ in joined]
            for w, tagger in taggers.items():
                ents = tagger.tag(texts)
                pred = [tags_on_words(e, sp) for e, (_, sp) in zip(ents, joined)]
                res[f"tag_{w}_{layout}"] = compute_metrics(ev.gold, pred)["f1"]
            if pipe is not None:
                ents = pipe(texts, batch_size=32)
                pred = [tags_on_words(e, sp, "entity_group") for e, (_, sp) in zip(ents, joined)]
                res[f"hf_pipeline_{layout}"] = compute_metrics(ev.gold, pred)["f1"]
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out["splits"][split] = res
        print(json.dumps({split: res}), flush=True)
        for layout in LAYOUTS:
            rows.append({"split": split, "layout": layout, "eval": 100 * res["eval"],
                         "before": 100 * res[f"tag_tokenizer_{layout}"], "after": 100 * res[f"tag_conll_{layout}"],
                         "hf": 100 * res[f"hf_pipeline_{layout}"] if pipe is not None else None,
                         "gap": 100 * (res[f"tag_conll_{layout}"] - res["eval"])})
    out["table"] = markdown_table(rows, [("split", "split", ""), ("layout", "text layout", ""),
                                         ("eval", "flaxner eval F1", ".2f"),
                                         ("before", "tag --words tokenizer (before)", ".2f"),
                                         ("after", "tag --words conll (after)", ".2f"),
                                         ("hf", "HF pipeline first", ".2f"), ("gap", "after - eval", "+.2f")])
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tag_vs_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a flaxner run folder (config.yaml, model/)")
    p.add_argument("--splits", nargs="+", default=["validation", "test"])
    p.add_argument("--limit", type=int, default=0, help="sentences per split (0: all)")
    p.add_argument("--no-hf", action="store_true", help="skip HF's PyTorch pipeline")
    p.add_argument("--documents", action="store_true", help="tag whole CoNLL-2003 documents (see above)")
    p.add_argument("--context", nargs="+", default=["none", "document"], help="with --documents: the policies")
    p.add_argument("--segment-length", type=int, default=None,
                   help="with --documents: tag.segment_length (default: the run's)")
    p.add_argument("--context-views", default=None, metavar="VIEWS",
                   help="with --documents: data.context_views of flaxner eval and of the neighbours tagger, e.g. "
                        "full,none (default: the run's)")
    p.add_argument("--sentence-thresholds", type=sentence_thresholds, default=None, metavar="P,...",
                   help="with --documents: tag.sentence_thresholds (default: the tagger's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = {"header": header(), **(run_documents(args) if args.documents else run(args))}
    print(out["table"])
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
