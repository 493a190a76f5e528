"""Tagging throughput: flaxner's Tagger against HF's PyTorch pipeline and a plain sorted PyTorch loop, on the
same model and the same corpus.

Contenders, each in its own process:
  flaxner   `Tagger.tag_file` on the JSONL corpus (read, tokenize, window, pack, forward, entities, write)
  pipeline  `pipeline("token-classification", aggregation_strategy="first")`, batch 32, over the texts
  torch     a plain loop: texts sorted by length, batch 32, dynamic padding, no_grad, softmax + argmax
            (no word grouping or entities: a lower bound on what PyTorch needs)

The corpus is CoNLL-2003 train sentences joined 1-4 at a time into documents (one JSONL line each), with
`--long` of them replaced by long documents of 40 sentences (> 512 sub-tokens: flaxner windows them, the two
PyTorch contenders truncate them at 512, so they do less work). Throughput is the corpus' sub-word tokens (no
special tokens) divided by the median of `--repeats` timed runs after a warm-up run. Peak RSS is measured on the
corpus and on one `--scale` times larger, each in a fresh process.

    python -m bench.tag_speed --model minilm
    python -m bench.tag_speed --model mbert          # mBERT shape (vocab 119,547, 12x768), random weights
    python -m bench.tag_speed --model distilbert-base-cased     # another family's base shape, random weights
    python -m bench.tag_speed --model minilm --lines 50 --repeats 1 --scale 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.common import TORCH_ENV, bench_command, header, median, peak_rss_mib, run_child, write_json

CONTENDERS = {"flaxner": "flaxner Tagger (JAX)", "pipeline": "HF pipeline, PyTorch, batch 32",
              "torch": "plain sorted PyTorch loop, batch 32"}
DEFAULT_LINES = {"minilm": 4000, "mbert": 1000, "distilbert-base-cased": 1000, "electra-base-discriminator": 1000,
                 "tiny": 200}
# the real vocabularies are not available offline: the hub model's shape, random weights, the MiniLM tokenizer
HUB_SHAPES = {"mbert": "bert-base-multilingual-cased", "distilbert-base-cased": "distilbert-base-cased",
              "electra-base-discriminator": "google/electra-base-discriminator"}


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
    save_model(model, params, tok, out)


def make_corpus(path: Path, lines: int, long_frac: float, seed: int = 0) -> None:
    from flaxner.data.splits import BUILTIN_DIR, find_split_file, read_conll

    sents = [" ".join(t) for t in read_conll(find_split_file(BUILTIN_DIR, "train"))["tokens"]]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            k = 40 if rng.random() < long_frac else rng.randint(1, 4)
            a = rng.randrange(len(sents) - k)
            f.write(json.dumps({"id": i, "text": " ".join(sents[a:a + k])}, ensure_ascii=False) + "\n")


def read_texts(path: Path) -> list[str]:
    return [json.loads(x)["text"] for x in path.read_text(encoding="utf-8").splitlines()]


def count_tokens(model_dir: Path, texts: list[str]) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def load_torch(model_dir: Path):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()  # model.safetensors of the export
    torch.set_grad_enabled(False)
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def worker(args) -> None:
    """One contender: warm up, then time `repeats` runs over the corpus; writes JSON to args.json."""
    corpus, model_dir, out_dir = Path(args.corpus), Path(args.model_dir), Path(args.json).parent
    times = []
    extra = {}
    if args.worker == "flaxner":
        from flaxner.tagging.tagger import Tagger

        tagger = Tagger.from_pretrained(model_dir)
        run = lambda: tagger.tag_file(str(corpus), str(out_dir / "flaxner.out.jsonl"), progress=False,  # noqa: E731
                                      overwrite=True)
    else:
        import torch

        texts = read_texts(corpus)
        model, tok = load_torch(model_dir)
        if args.worker == "pipeline":
            from transformers import pipeline

            pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first",
                            device="cpu")
            run = lambda: list(pipe(texts, batch_size=32))  # noqa: E731
        else:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))

            def run():
                out = [None] * len(texts)
                for s in range(0, len(order), 32):
                    idx = order[s:s + 32]
                    enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=512,
                              return_tensors="pt")
                    probs = torch.softmax(model(**enc).logits, -1)
                    score, label = probs.max(-1)
                    for r, i in enumerate(idx):
                        out[i] = (label[r].numpy(), score[r].numpy())
                return out
    for k in range(args.repeats + 1):  # the first run warms up (compiles, allocates)
        t0 = time.perf_counter()
        result = run()
        if k:
            times.append(time.perf_counter() - t0)
    if args.worker == "flaxner":
        extra = {"compiles": result["compiles"], "shapes": result["shapes"]}
    write_json(args.json, {"times": times, "peak_rss_mib": peak_rss_mib(), **extra})


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tag_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DEFAULT_LINES), default="minilm")
    p.add_argument("--lines", type=int, default=None, help="documents in the corpus (default by model)")
    p.add_argument("--long", type=float, default=0.01, help="fraction of long (40-sentence) documents")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=10, help="the larger corpus for peak memory is this many times bigger")
    p.add_argument("--contenders", default="flaxner,pipeline,torch")
    p.add_argument("--json", default=None, help="write all results here too")
    p.add_argument("--torch-malloc", choices=sorted(TORCH_ENV), default="system",
                   help="allocator settings for the PyTorch contenders (default glibc's own)")
    p.add_argument("--worker", choices=tuple(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    info = header()
    lines = args.lines or DEFAULT_LINES[args.model]
    contenders = [c for c in args.contenders.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="tag-speed-") as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        export_model(args.model, model_dir)
        small, large = tmp / "small.jsonl", tmp / "large.jsonl"
        make_corpus(small, lines, args.long)
        make_corpus(large, lines * args.scale, args.long, seed=1)
        tokens = count_tokens(model_dir, read_texts(small))
        print(f"# corpus: {lines} documents, {tokens} sub-word tokens; memory also on {lines * args.scale}")
        results = {}
        for c in contenders:
            child = bench_command("tag_speed", "--worker", c, "--model-dir", str(model_dir))
            env = {} if c == "flaxner" else TORCH_ENV[args.torch_malloc]
            r = run_child(child + ["--corpus", str(small), "--repeats", str(args.repeats),
                                   "--json", str(tmp / f"{c}.json")], tmp / f"{c}.json", env=env)
            big = run_child(child + ["--corpus", str(large), "--repeats", "0", "--json", str(tmp / f"{c}-big.json")],
                            tmp / f"{c}-big.json", env=env)
            sec = median(r.get("times", []))
            results[c] = {"seconds": sec, "tokens_per_s": tokens / sec, "peak_rss_mib": r.get("peak_rss_mib"),
                          "peak_rss_mib_large": big.get("peak_rss_mib"), "error": r.get("error") or big.get("error"),
                          **{k: r[k] for k in ("compiles", "shapes") if k in r}}
    print(f"\n## {args.model}: {lines} documents, {tokens} sub-word tokens, median of {args.repeats}\n")
    print("| contender | s | sub-word tokens/s | flaxner × | peak RSS MiB | peak RSS MiB, "
          f"{args.scale}× input |\n|---|---|---|---|---|---|")
    fx = results.get("flaxner", {}).get("tokens_per_s")
    for c, r in results.items():
        ratio = f"{fx / r['tokens_per_s']:.2f}" if fx and c != "flaxner" else "—"
        print(f"| {CONTENDERS[c]} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {ratio} | "
              f"{r['peak_rss_mib'] or float('nan'):,.0f} | {r['peak_rss_mib_large'] or float('nan'):,.0f} |")
    if "flaxner" in results:
        print(f"\nflaxner compiled {results['flaxner'].get('compiles')} shapes: {results['flaxner'].get('shapes')}")
    if args.json:
        write_json(args.json, {**info, "model": args.model, "lines": lines, "tokens": tokens, "results": results})


if __name__ == "__main__":
    main()
