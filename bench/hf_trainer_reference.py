"""A flaxner config's recipe through PyTorch + the HF Trainer: the reference the benchmarks compare against.

BertForTokenClassification from the same model folder (or the same random shape), the same tokenized data and
label inventory as `flaxner train` reads from the config's `data` (flaxner.data.splits.load_dataset_splits + encode), lr / batch / epochs / seed / schedule / clipping from the config, the
Trainer's AdamW and dynamic padding, evaluation every epoch scored by seqeval on first sub-tokens, as the
seed model's card. Prints the per-epoch table and the wall time split (load, train, evaluate, save, test).

    python -m bench.hf_trainer_reference --config configs/quickstart.yaml
    python -m bench.hf_trainer_reference --config configs/minilm-conll2003.yaml --json out.json
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

# the Trainer as users run it: glibc's own allocator settings, not the ones `import flaxner` would apply
os.environ.setdefault("FLAXNER_MALLOC", "system")
from bench.common import header, peak_rss_mib, write_json  # noqa: E402
from bench.train_speed import torch_model  # noqa: E402


def seqeval_metrics(labels: list[str]):
    """The Trainer's compute_metrics: argmax, keep labelled positions, seqeval micro scores."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    def compute(pred) -> dict:
        preds = np.argmax(pred.predictions, -1)
        true, hyp = [], []
        for p_row, l_row in zip(preds, pred.label_ids):
            keep = l_row != -100
            true.append([labels[i] for i in l_row[keep]])
            hyp.append([labels[i] for i in p_row[keep]])
        return {"precision": precision_score(true, hyp, zero_division=0),
                "recall": recall_score(true, hyp, zero_division=0), "f1": f1_score(true, hyp, zero_division=0),
                "accuracy": accuracy_score(true, hyp)}

    return compute


def sampling_args(group_by_length: bool) -> dict:
    """Length-grouped or random batches in the installed transformers' words: `group_by_length` up to 4.x,
    `train_sampling_strategy` from 5.0 (which removed the former)."""
    import dataclasses

    from transformers import TrainingArguments

    if "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hf_trainer_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/minilm-conll2003.yaml", help="flaxner config (path or name)")
    p.add_argument("--output-dir", default="", help="Trainer output (default a temp dir, removed)")
    p.add_argument("--group-by-length", action="store_true", help="the Trainer's length-grouped sampler "
                   "(default: random batches, as the seed run)")
    p.add_argument("--save", choices=["epoch", "no"], default="epoch", help="checkpoint every epoch as "
                   "flaxner does (default), or not")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="flaxner config overrides")
    args = p.parse_args(argv)
    info = header()

    import torch
    from transformers import DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    from flaxner.config import load_config
    from flaxner.data.splits import encode, load_dataset_splits
    from flaxner.models.loading import make_tokenizer

    cfg = load_config(args.config, args.overrides)
    tc, d = cfg.train, cfg.data
    tok = make_tokenizer(cfg.model)
    splits = {"train": d.train_split, "eval": d.eval_split}
    # the splits and labels flaxner.training.train.load_splits reads: test as train.eval_test says (auto: when there is one)
    required = [d.train_split, d.eval_split] + ([d.test_split] if tc.eval_test is True else [])
    ds, labels = load_dataset_splits(d, required, [d.test_split] if tc.eval_test == "auto" else [])
    labels = list(labels)
    if tc.eval_test is not False and d.test_split in ds:
        splits["test"] = d.test_split
    data = {}
    for key, split in splits.items():
        enc = encode(ds[split], tok, d, labels)
        data[key] = [{"input_ids": i.tolist(), "labels": lab.tolist()} for i, lab in zip(enc.input_ids, enc.labels)]
    torch.manual_seed(tc.seed)
    model = torch_model(cfg, None if not cfg.model.random_init else len(tok), labels)

    class EpochLoss(TrainerCallback):
        """Mean of the logged training losses of each epoch (the card's Training Loss column)."""

        def __init__(self):
            self.losses: dict[int, list[float]] = {}

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.setdefault(int(np.ceil(state.epoch - 1e-9)), []).append(logs["loss"])

    class TimedTrainer(Trainer):
        """Times the per-epoch evaluations and checkpoint saves that happen inside train()."""

        eval_s = save_s = 0.0

        def evaluate(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super().evaluate(*a, **kw)
            finally:
                self.eval_s += time.perf_counter() - t

        def _save_checkpoint(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._save_checkpoint(*a, **kw)
            finally:
                self.save_s += time.perf_counter() - t

    tmp = tempfile.TemporaryDirectory() if not args.output_dir else None
    targs = TrainingArguments(
        output_dir=args.output_dir or tmp.name, learning_rate=tc.learning_rate,
        per_device_train_batch_size=tc.batch_size, per_device_eval_batch_size=tc.eval_batch_size,
        num_train_epochs=tc.epochs, max_steps=tc.max_steps or -1, seed=tc.seed, lr_scheduler_type="linear",
        warmup_steps=tc.warmup_steps, weight_decay=tc.weight_decay, adam_beta1=tc.adam_b1, adam_beta2=tc.adam_b2,
        adam_epsilon=tc.adam_eps, max_grad_norm=tc.max_grad_norm, eval_strategy="epoch", save_strategy=args.save,
        save_total_limit=tc.keep_checkpoints if args.save != "no" else None,
        load_best_model_at_end=args.save != "no" and tc.eval_test, metric_for_best_model="f1",
        logging_steps=tc.log_every, report_to="none", **sampling_args(args.group_by_length),
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=False)
    losses = EpochLoss()
    trainer = TimedTrainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["eval"],
                           data_collator=DataCollatorForTokenClassification(tok),
                           compute_metrics=seqeval_metrics(labels), callbacks=[losses])
    load_s = time.perf_counter() - T0
    t = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t
    history = []
    for h in trainer.state.log_history:
        if "eval_f1" in h:
            loss = float(np.mean(losses.losses.get(int(round(h["epoch"])), [np.nan])))
            history.append({"epoch": h["epoch"], "step": h["step"], "train_loss": loss,
                            **{k: h[f"eval_{k}"] for k in ("loss", "precision", "recall", "f1", "accuracy")}})
    out = {**info, "config": args.config, "overrides": args.overrides, "group_by_length": args.group_by_length,
           "load_s": load_s, "train_s": train_wall - trainer.eval_s - trainer.save_s, "eval_s": trainer.eval_s,
           "save_s": trainer.save_s, "history": history,
           "labels": labels, "steps": trainer.state.global_step, "threads": torch.get_num_threads()}
    if "test" in data:
        t = time.perf_counter()
        res = trainer.predict(data["test"], metric_key_prefix="test")
        out["test_s"] = time.perf_counter() - t
        out["test"] = {k[5:]: v for k, v in res.metrics.items() if k[5:] in ("precision", "recall", "f1", "accuracy")}
    out["total_s"] = time.perf_counter() - T0
    out["peak_rss_mib"] = peak_rss_mib()

    from flaxner.training.export import epoch_table

    print("\n" + epoch_table(history))
    if "test" in out:
        print("\ntest: " + " ".join(f"{k} {v:.4f}" for k, v in out["test"].items()))
    test = f", test {out['test_s']:.1f}" if "test_s" in out else ""
    print(f"\nwall {out['total_s']:.1f} s: load {load_s:.1f}, train {out['train_s']:.1f}, evaluate "
          f"{out['eval_s']:.1f}, save {out['save_s']:.1f}{test} (PyTorch: no compile)")
    if args.json:
        write_json(args.json, out)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
