"""Cold compile time and step time of the loss gradient for flaxner's BERT, scanned vs unrolled, and
transformers 4's Flax class where importable: one MiniLM-shaped batch, random weights, no compilation cache.

    python -m bench.bert_variants [--batch 16] [--length 64] [--repeats 5] [--layers 0] [--json OUT]

Prints one JSON line per variant: compile_s (median of `--compiles` fresh compiles) and step_s (median of
`--repeats` timed steps after a warm-up)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np


def variants(conf):
    from flaxner.models.bert import FlaxBertForTokenClassification

    out = {"scan": FlaxBertForTokenClassification(conf, scan_layers=True),
           "unrolled": FlaxBertForTokenClassification(conf, scan_layers=False)}
    try:
        from transformers import BertConfig as HFConfig
        from transformers import FlaxBertForTokenClassification as HF

        out["hf_flax"] = HF(HFConfig(**conf.to_dict()), _do_init=False)
    except ImportError:  # transformers 5 has no Flax classes
        pass
    return out


def main() -> None:
    from flaxner.models.bert import FlaxBertForTokenClassification

    ap = argparse.ArgumentParser(prog="python -m bench.bert_variants")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compiles", type=int, default=3)
    ap.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: MiniLM's 6)")
    ap.add_argument("--only", default="", help="comma-separated variants")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.models.loading import packaged_minilm, read_config
    from flaxner.training.step import loss_fn

    conf = read_config(Path(packaged_minilm())).replace(labels=tuple(CONLL_LABELS))
    if args.layers:
        conf = conf.replace(num_hidden_layers=args.layers)
    params = FlaxBertForTokenClassification(conf).init_params(0)
    rng = np.random.RandomState(0)
    ids = rng.randint(5, conf.vocab_size, (args.batch, args.length))
    mask = (np.arange(args.length)[None] < rng.randint(args.length // 2, args.length + 1, (args.batch, 1)))
    batch = {"input_ids": ids * mask, "attention_mask": mask.astype(np.int32),
             "labels": np.where(mask, rng.randint(0, len(CONLL_LABELS), ids.shape), -100)}
    key = jax.random.PRNGKey(0)
    rows = []
    for name, model in variants(conf).items():
        if args.only and name not in args.only.split(","):
            continue

        def grad_fn(p, b, r, apply=model.__call__):
            return jax.value_and_grad(loss_fn, has_aux=True)(p, b, r, apply)

        compiles = []
        for _ in range(args.compiles):
            jax.clear_caches()
            t = time.perf_counter()
            compiled = jax.jit(grad_fn).lower(params, batch, key).compile()
            compiles.append(time.perf_counter() - t)
        jax.block_until_ready(compiled(params, batch, key))
        steps = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(compiled(params, batch, key))
            steps.append(time.perf_counter() - t)
        row = {"variant": name, "layers": conf.num_hidden_layers, "batch": [args.batch, args.length],
               "compile_s": round(statistics.median(compiles), 3), "compile_all_s": [round(c, 3) for c in compiles],
               "step_s": round(statistics.median(steps), 4), "step_all_s": [round(s, 4) for s in steps],
               "backend": jax.default_backend()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
