"""Tagging throughput: flaxner's Tagger against HF's PyTorch pipeline, a plain sorted PyTorch loop and the same
loop on ONNX Runtime (fp32 and int8), on the same model and the same corpus, in one invocation.

Contenders, each in its own process (`--contenders` picks them and their order):
  flaxner    `Tagger.tag_file` on the JSONL corpus (read, tokenize, window, pack, forward, entities, write)
  pipeline   `pipeline("token-classification", aggregation_strategy="first")`, batch 32, over the texts
  torch      a plain loop (bench/tag_loops.py): the fast tokenizer with offsets, texts sorted by length, batch 32,
             dynamic padding, no_grad, argmax (no word grouping or entities: a lower bound on what PyTorch needs)
  onnx       the same loop on ONNX Runtime: the model exported with `torch.onnx.export`, intra-op threads = cores
  onnx-int8  the same with `quantize_dynamic` (QInt8 weights)
  flaxner-float32, flaxner-mixed, flaxner-unpacked   (only when named) flaxner with `--dtype float32`, with
             `--dtype mixed`, with float32 and `--pack-length 0` (one window a row)

The model is `--model`'s (exported by flaxner with a fresh CoNLL classifier) or, with `--run RUN`, a trained run's
(flaxner tags with the run folder, so with its tag settings; the others load RUN/model). The ONNX files are
exported from that HF folder in a child process before the contenders run.

`--corpus train` (default): CoNLL-2003 train sentences joined 1-4 at a time into documents (one JSONL line each),
with `--long` of them replaced by long documents of 40 sentences (> 512 sub-tokens: flaxner windows them, the
other contenders truncate them at 512, so they do less work). `--corpus test`: CoNLL-2003 test sentences joined 1-4
at a time (10,000 lines by default, as issue 25 measured), and each contender's entity F1 on the test split's gold
words (flaxner's and the pipeline's entities map to the words they overlap, the loops' words take their first
sub-token's label; each sentence scored as `flaxner eval` scores it). Throughput is the corpus' sub-word tokens (no
special tokens) divided by the median of `--repeats` timed runs after a warm-up run. Peak RSS is measured on the
corpus and on one `--scale` times larger (`--scale 0`: none), each in a fresh process.

    python -m bench.tag_speed --model minilm
    python -m bench.tag_speed --model mbert          # mBERT shape (vocab 119,547, 12x768), random weights
    python -m bench.tag_speed --model distilbert-base-cased     # another family's base shape, random weights
    python -m bench.tag_speed --model deberta-v3-base   # DeBERTa-v3-base shape (vocab 128,100), random weights
    python -m bench.tag_speed --run runs/minilm --corpus test --scale 0 --contenders flaxner,onnx,onnx-int8,torch
    python -m bench.tag_speed --model minilm --lines 50 --repeats 1 --scale 2   # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import TORCH_ENV, bench_command, header, markdown_table, median, peak_rss_mib, run_child, \
    write_json

CONTENDERS = {"flaxner": "flaxner Tagger (JAX)", "flaxner-float32": "flaxner Tagger, --dtype float32",
              "flaxner-mixed": "flaxner Tagger, --dtype mixed",
              "flaxner-unpacked": "flaxner Tagger, float32, --pack-length 0", "pipeline": "HF pipeline, PyTorch, batch 32",
              "torch": "plain sorted PyTorch loop, batch 32", "onnx": "ONNX Runtime fp32, sorted loop, batch 32",
              "onnx-int8": "ONNX Runtime int8 (dynamic), sorted loop, batch 32"}
ONNX = ("onnx", "onnx-int8")
# flaxner's variants: tag options over the run's (or the defaults)
FLAXNER = {"flaxner": {}, "flaxner-float32": {"dtype": "float32"}, "flaxner-mixed": {"dtype": "mixed"},
           "flaxner-unpacked": {"pack_length": 0, "dtype": "float32"}}
VARIANTS = ("flaxner-float32", "flaxner-mixed", "flaxner-unpacked")  # only when asked for
DEFAULT_LINES = {"minilm": 4000, "mbert": 1000, "distilbert-base-cased": 1000, "electra-base-discriminator": 1000,
                 "deberta-v3-base": 1000, "ModernBERT-base": 1000, "tiny": 200}
TEST_LINES = 10_000  # --corpus test with a real model (MiniLM, --run): issue 25's corpus
# the real vocabularies are not available offline: the hub model's shape, random weights, the MiniLM tokenizer
HUB_SHAPES = {"mbert": "bert-base-multilingual-cased", "distilbert-base-cased": "distilbert-base-cased",
              "electra-base-discriminator": "google/electra-base-discriminator",
              "deberta-v3-base": "deberta-v3-base", "ModernBERT-base": "answerdotai/ModernBERT-base"}


def export_model(kind: str, out: Path) -> None:
    """A token-classification model with CoNLL labels in HF format (flaxner's export)."""
    from flaxner.config import ModelConfig
    from flaxner.training.export import save_model
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import make_model, make_tokenizer

    if kind == "minilm":
        cfg = ModelConfig(name="minilm", from_pt=True)
    elif kind in HUB_SHAPES:
        cfg = ModelConfig(name=HUB_SHAPES[kind], random_init=True, tokenizer="minilm")
    else:
        cfg = ModelConfig(name="tests/fixtures/tiny-bert", random_init=True)
    tok = make_tokenizer(cfg)
    # a vocabulary smaller than the tokenizer's ids (DistilBERT-cased's 28,996): the tokenizer's size
    vocab = len(tok) if kind != "mbert" and cfg.random_init else None
    model, params = make_model(cfg, CONLL_LABELS, seed=0, vocab_size=vocab)
    if cfg.random_init:  # the special ids are the tokenizer's (ModernBERT's 50,283 is past MiniLM's vocabulary)
        ids = {"pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id,
               "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id}
        model = type(model)(model.config.replace(**{k: v for k, v in ids.items() if hasattr(model.config, k)}))
    save_model(model, params, tok, out)


def make_corpus(path: Path, lines: int, long_frac: float, seed: int = 0, split: str = "train") -> list[list[int]]:
    """A JSONL corpus of the split's sentences (words joined by spaces) joined 1-4 at a time by spaces, a
    `long_frac` of its lines 40 sentences long; returns each line's (first sentence, count)."""
    from flaxner.data.splits import BUILTIN_DIR, find_split_file, read_conll

    sents = [" ".join(t) for t in read_conll(find_split_file(BUILTIN_DIR, split))["tokens"]]
    rng = random.Random(seed)
    picks = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            k = 40 if rng.random() < long_frac else rng.randint(1, 4)
            a = rng.randrange(len(sents) - k)
            picks.append([a, k])
            f.write(json.dumps({"id": i, "text": " ".join(sents[a:a + k])}, ensure_ascii=False) + "\n")
    return picks


def read_texts(path: Path) -> list[str]:
    return [json.loads(x)["text"] for x in path.read_text(encoding="utf-8").splitlines()]


def token_lengths(model_dir: Path, texts: list[str]) -> list[int]:
    """Sub-word tokens of each text, special tokens left out."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def contender(args, corpus: Path, model_dir: Path):
    """(run, score): one pass over the corpus, and the F1 of a pass' result given `picks`, each line's test
    sentences."""
    import bench.tag_loops as tag_loops

    if args.worker in FLAXNER:
        from flaxner.tagging.tagger import Tagger

        out = corpus.parent / f"{corpus.stem}.{args.worker}.jsonl"
        tagger = Tagger(args.tagger_dir or model_dir, **FLAXNER[args.worker])

        def score(result, picks):
            ents = [json.loads(x).get("entities") or [] for x in out.read_text(encoding="utf-8").splitlines()]
            return tag_loops.f1_of_entities(picks, ents)

        return lambda: tagger.tag_file(str(corpus), str(out), progress=False, overwrite=True), score
    texts = read_texts(corpus)
    if args.worker == "pipeline":
        from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

        model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()  # its model.safetensors
        pipe = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
                        aggregation_strategy="first", device="cpu")
        return (lambda: list(pipe(texts, batch_size=32)),
                lambda result, picks: tag_loops.f1_of_entities(picks, result, "entity_group"))
    if args.worker == "torch":
        forward = tag_loops.torch_forward(model_dir)
    else:
        forward = tag_loops.onnx_forward(Path(args.onnx_dir) / tag_loops.ONNX_FILES[args.worker])
    batcher, names = tag_loops.Batcher(model_dir), tag_loops.id2label(model_dir)
    return (lambda: tag_loops.sorted_loop(texts, batcher, forward),
            lambda result, picks: tag_loops.f1_of_labels(picks, result, names))


def worker(args) -> None:
    """One contender: warm up, then time `repeats` runs over the corpus; writes JSON to args.json (with the F1 of
    the last run on --gold's test sentences, computed after the peak RSS is read)."""
    if args.worker == "export":
        from bench.tag_loops import export_onnx

        return write_json(args.json, export_onnx(args.model_dir, args.onnx_dir, int8=args.int8))
    corpus = Path(args.corpus_file)
    run, score = contender(args, corpus, Path(args.model_dir))
    times = []
    for k in range(args.repeats + 1):  # the first run warms up (compiles, allocates)
        t0 = time.perf_counter()
        result = run()
        if k:
            times.append(time.perf_counter() - t0)
    out = {"times": times, "peak_rss_mib": peak_rss_mib()}
    if args.worker in FLAXNER:
        out.update(compiles=result.compiles, shapes=result.shapes)
    if args.gold:
        out["f1"] = score(result, json.loads(Path(args.gold).read_text()))
    write_json(args.json, out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tag_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DEFAULT_LINES), default="minilm")
    p.add_argument("--run", default=None, help="a trained run folder (or HF folder): its model for every contender")
    p.add_argument("--corpus", choices=("train", "test"), default="train",
                   help="CoNLL-2003 split the documents come from; test also scores F1 on its gold words")
    p.add_argument("--lines", type=int, default=None, help="documents in the corpus (default by model and corpus)")
    p.add_argument("--long", type=float, default=None,
                   help="fraction of long (40-sentence) documents (default 0.01 with --corpus train, 0 with test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=10,
                   help="the larger corpus for peak memory is this many times bigger (0: none)")
    p.add_argument("--contenders", default=None,
                   help=f"comma-separated, run in this order (default {','.join(CONTENDERS)}; onnx ones only if "
                        "onnxruntime is installed)")
    p.add_argument("--json", default=None, help="write all results here too")
    p.add_argument("--torch-malloc", choices=sorted(TORCH_ENV), default="system",
                   help="allocator settings for the PyTorch and ONNX Runtime contenders (default glibc's own)")
    p.add_argument("--worker", choices=(*CONTENDERS, "export"), help=argparse.SUPPRESS)
    for hidden in ("--corpus-file", "--model-dir", "--tagger-dir", "--onnx-dir", "--gold"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.contenders is None:
        have_ort = importlib.util.find_spec("onnxruntime") is not None
        args.contenders = ",".join(c for c in CONTENDERS if (have_ort or c not in ONNX) and c not in VARIANTS)
    args.contenders = [c for c in args.contenders.split(",") if c]
    if unknown := [c for c in args.contenders if c not in CONTENDERS]:
        p.error(f"--contenders: unknown {', '.join(unknown)} (known: {', '.join(CONTENDERS)})")
    if args.long is None:
        args.long = 0.01 if args.corpus == "train" else 0.0
    if args.lines is None:
        real = args.run or args.model == "minilm"
        args.lines = TEST_LINES if args.corpus == "test" and real else DEFAULT_LINES[args.model]
    return args


def model_folders(args, tmp: Path) -> tuple[Path, Path | None]:
    """The HF folder every PyTorch/ONNX contender loads, and the folder flaxner's Tagger loads (the run's)."""
    if args.run:
        run = Path(args.run)
        hf = run / "model" if (run / "model" / "config.json").is_file() else run
        return hf, run
    export_model(args.model, tmp / "model")
    return tmp / "model", None


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    info = header()
    lines, contenders = args.lines, args.contenders
    label = args.run or args.model
    with tempfile.TemporaryDirectory(prefix="tag-speed-") as tmp:
        tmp = Path(tmp)
        model_dir, tagger_dir = model_folders(args, tmp)
        small, large = tmp / "small.jsonl", tmp / "large.jsonl"
        picks = make_corpus(small, lines, args.long, split=args.corpus)
        if args.scale:
            make_corpus(large, lines * args.scale, args.long, seed=1, split=args.corpus)
        gold = None
        if args.corpus == "test":
            gold = tmp / "gold.json"
            write_json(gold, picks)  # the test sentences of each line, for the F1 of each contender
        lengths = token_lengths(model_dir, read_texts(small))
        tokens, over = sum(lengths), sum(n + 2 > 512 for n in lengths)
        print(f"# corpus: {lines} documents of CoNLL-2003 {args.corpus} sentences, {tokens} sub-word tokens, {over} "
              f"longer than 512 with special tokens; memory also on {lines * args.scale or 'no other corpus'}")
        base = ["--model-dir", str(model_dir), "--onnx-dir", str(tmp / "onnx")]
        if tagger_dir is not None:
            base += ["--tagger-dir", str(tagger_dir)]
        env = TORCH_ENV[args.torch_malloc]
        export = None
        if any(c in ONNX for c in contenders):
            cmd = bench_command("tag_speed", "--worker", "export", *base, "--json", str(tmp / "export.json"))
            export = run_child(cmd + ["--int8"] * ("onnx-int8" in contenders), tmp / "export.json", env=env)
            print(describe_export(export, model_dir), flush=True)
        results = {}
        for c in contenders:
            child = bench_command("tag_speed", "--worker", c, *base)
            e = {} if c in FLAXNER else env
            r = run_child(child + ["--corpus-file", str(small), "--repeats", str(args.repeats),
                                   "--json", str(tmp / f"{c}.json")] + ["--gold", str(gold)] * (gold is not None),
                          tmp / f"{c}.json", env=e)
            big = run_child(child + ["--corpus-file", str(large), "--repeats", "0",
                                     "--json", str(tmp / f"{c}-big.json")], tmp / f"{c}-big.json", env=e) \
                if args.scale else {}
            sec = median(r.get("times", []))
            results[c] = {"seconds": sec, "tokens_per_s": tokens / sec, "f1": r.get("f1"),
                          "peak_rss_mib": r.get("peak_rss_mib"), "peak_rss_mib_large": big.get("peak_rss_mib"),
                          "error": r.get("error") or big.get("error"),
                          **{k: r[k] for k in ("compiles", "shapes") if k in r}}
    report(args, info, label, tokens, over, results, export)


def describe_export(export: dict, model_dir: Path) -> str:
    if export.get("error"):
        return f"# ONNX export from {model_dir} failed: {export['error']}"
    out = f"# ONNX export from {model_dir}: fp32 {export['fp32_mib']:,.1f} MiB in {export['export_s']:.1f} s"
    if "int8_mib" in export:
        out += f", int8 {export['int8_mib']:,.1f} MiB in {export['quantize_s']:.1f} s"
    return out + f"; inputs {', '.join(export['inputs'])}"


def report(args, info: dict, label: str, tokens: int, over: int, results: dict, export: dict | None) -> None:
    print(f"\n## {label}: {args.lines} documents of CoNLL-2003 {args.corpus}, {tokens} sub-word tokens, "
          f"median of {args.repeats}\n")
    fx = results.get("flaxner", {}).get("tokens_per_s")
    ox = results.get("onnx", {}).get("tokens_per_s")
    rows = []
    for c, r in results.items():
        r["flaxner_x"] = fx / r["tokens_per_s"] if fx and c != "flaxner" else None
        r["over_onnx"] = r["tokens_per_s"] / ox if ox and c != "onnx" else None
        rows.append({**r, "name": CONTENDERS[c]})
    cols = [("name", "contender", ""), ("seconds", "s", ".2f"), ("tokens_per_s", "sub-word tokens/s", ",.0f"),
            ("flaxner_x", "flaxner ×", ".2f"), ("f1", "F1", ".4f"), ("peak_rss_mib", "peak RSS MiB", ",.0f")]
    if ox:
        cols.insert(4, ("over_onnx", "× ONNX fp32", ".2f"))
    if args.scale:
        cols.append(("peak_rss_mib_large", f"peak RSS MiB, {args.scale}× input", ",.0f"))
    print(markdown_table(rows, cols))
    print("\nflaxner × is flaxner's sub-word tokens/s over the contender's (above 1: flaxner is faster); × ONNX fp32 "
          "is the contender's over ONNX Runtime fp32's. F1: entity F1 "
          "on CoNLL-2003 test gold words (--corpus test).")
    if any(c != "flaxner" for c in results):
        print(f"The pipeline and the loops truncate each text at 512 sub-tokens, where flaxner windows it: {over} of "
              "the documents are longer (less work for them; the words past the cut are O in their F1).")
    if "flaxner" in results:
        print(f"flaxner compiled {results['flaxner'].get('compiles')} shapes: {results['flaxner'].get('shapes')}")
    if args.json:
        write_json(args.json, {**info, "model": label, "corpus": args.corpus, "lines": args.lines, "tokens": tokens,
                               "over_512": over, "contenders": args.contenders, "onnx_export": export,
                               "results": results})


if __name__ == "__main__":
    main()
