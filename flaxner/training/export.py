"""What a run leaves behind: metrics.jsonl, the HF-format model, the model card, the progress bar and tables."""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

from tqdm.auto import tqdm

from flaxner.config import Config
from flaxner.rundir import RunDir


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the restored step are dropped so nothing is duplicated."""

    def __init__(self, path: Path, keep_until: int = 0):
        self.path = Path(path)
        kept = []
        if keep_until and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= keep_until]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (a run folder or the file itself)."""
    p = Path(path)
    p = RunDir(p).metrics if p.is_dir() else p
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


@contextlib.contextmanager
def progress(total: int, initial: int = 0):
    """The optimizer steps' bar; log lines written meanwhile go above it, each on its own line."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()


def save_model(model, params, tokenizer, out: Path) -> None:
    """HF-format export that flaxner, transformers' PyTorch classes (`BertForTokenClassification.from_pretrained`)
    and transformers 4's Flax class all load: config.json (architectures: the family's registry row, id2label/
    label2id), model.safetensors (PyTorch names and layout), flax_model.msgpack (HF Flax tree) and the tokenizer."""
    model.save_pretrained(out, params=params)
    tokenizer.save_pretrained(out)


def save_pytorch_safetensors(params: dict, path: Path) -> None:
    """Write Flax BERT params under PyTorch's names and layouts (kernel -> weight transposed, scale/embedding ->
    weight), without needing torch."""
    from safetensors.numpy import save_file

    from flaxner.models.weights import to_pytorch_names

    save_file(to_pytorch_names(params), str(path), metadata={"format": "pt"})


def format_scores(m: dict) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("loss", "precision", "recall", "f1", "accuracy") if k in m)


def per_type_table(scores: dict) -> str:
    """seqeval's per-type report as Markdown: precision, recall, F1 and support of each entity type, then the
    micro average (the scores' own precision, recall and F1)."""
    per = scores.get("per_type") or {}
    rows = ["| Type | Precision | Recall | F1 | Support |", "|:---|---:|---:|---:|---:|"]
    rows += [f"| {k} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
             for k, v in sorted(per.items())]
    rows.append(f"| micro avg | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
                f"{sum(v['support'] for v in per.values())} |")
    return "\n".join(rows)


def epoch_table(history: list[dict]) -> str:
    """The seed card's per-epoch table as Markdown."""
    head = "| Training Loss | Epoch | Step | Validation Loss | Precision | Recall | F1 | Accuracy |"
    rows = [head, "|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|"]
    for h in history:
        rows.append(f"| {h['train_loss']:.4f} | {h['epoch']:.1f} | {h['step']} | {h['loss']:.4f} | "
                    f"{h['precision']:.4f} | {h['recall']:.4f} | {h['f1']:.4f} | {h['accuracy']:.4f} |")
    return "\n".join(rows)


def final_report(summary) -> str:
    """What `flaxner train` prints at the end: the per-evaluation table, the per-type reports of the exported
    model (validation, and test when scored), and where the run is."""
    out = ["", epoch_table(summary.history)]
    if summary.best_per_type:
        best = next((h for h in summary.history if h["step"] == summary.best_step), None)
        if best:
            out += ["", f"validation, per type (step {summary.best_step}, the exported model):",
                    per_type_table({**best, "per_type": summary.best_per_type})]
    if summary.test:
        t = summary.test
        out += ["", f"test: precision {t['precision']:.4f} recall {t['recall']:.4f} f1 {t['f1']:.4f} "
                    f"accuracy {t['accuracy']:.4f}; per type:", per_type_table(t)]
    if summary.stopped_early:
        out += ["", f"stopped early (train.patience) at step {summary.steps}; the model is step {summary.best_step}'s"]
    out += ["", f"run folder: {summary.run_dir}  (model in {summary.run_dir}/model)  compiled train shapes: "
                f"{len(summary.compiled_train_shapes)}  total {summary.total_s:.0f}s"]
    return "\n".join(out)


def _versions() -> str:
    import flax
    import jax
    import optax
    import transformers

    import flaxner

    return "\n".join(f"- {n} {v}" for n, v in (
        ("flaxner", flaxner.__version__), ("Transformers", transformers.__version__), ("JAX", jax.__version__),
        ("Flax", flax.__version__), ("Optax", optax.__version__), ("Python", platform.python_version())))


def sample_predictions(samples: list[dict], title: str) -> tuple[str, str]:
    """The card's section of sample predictions (summary.json's `samples`, gold and predicted side by side in
    flaxner's entity renderer, inline HTML that a Markdown viewer shows) and samples.html, the same table as a
    page; both empty without samples."""
    from flaxner.data.display import samples_page, worst_html
    from flaxner.training.analysis import span_errors

    if not samples:
        return "", ""
    items = [{**s, "errors": span_errors(s["gold_tags"], s["pred_tags"])} for s in samples]
    intro = (f"The first {len(items)} validation sentences with an entity, annotated (gold) and as this model tags "
             f"them (predicted), with the span errors of each")
    section = (f"## Sample predictions\n\n{intro} (also [samples.html](samples.html), a page any browser opens):"
               f"\n\n{worst_html(items)}\n\n")
    return section, samples_page(items, f"{title}: sample predictions", intro + ".")


def write_card(run_dir: str | Path | RunDir, cfg: Config, summary: dict) -> None:
    """README.md in the seed card's format, with samples.html, beside the exported model; `summary` is
    summary.json's content."""
    from flaxner.data.splits import describe_model, describe_source

    rd = RunDir(run_dir)
    d, m = cfg.data, cfg.model
    # The hub names the card's metadata can link: the packaged copy is conll2003, a hub source is itself.
    hub_data = "conll2003" if d.source == "builtin" else None if Path(d.source).expanduser().exists() else d.source
    hub_model = ("sentence-transformers/all-MiniLM-L6-v2" if m.name == "minilm" else
                 None if m.random_init or Path(m.name).expanduser().exists() else m.name)
    base = f"[{describe_model(m)}](https://huggingface.co/{hub_model})" if hub_model else describe_model(m)
    t, hist = cfg.train, summary["history"]
    def short(text: str) -> str:  # the name without its explanation in brackets
        return text.split(" (")[0]

    title = f"{short(describe_model(m)).rsplit('/', 1)[-1]} fine-tuned for NER on {short(describe_source(d))}"
    labels = summary.get("labels") or list(d.labels)
    n = summary.get("train_sentences")
    data_line = (f"Trained on {n if n is not None else 'the'} sentences of its train split"
                 f"{f' (data.limit: the first {d.limit} of each split)' if d.limit else ''}, "
                 f"with {len(labels)} labels: {', '.join(labels)}.\n" if labels else "")
    best = next((h for h in hist if h["step"] == summary.get("best_step")), None) or \
        (max(hist, key=lambda h: h["f1"]) if hist else None)  # the exported model's evaluation
    results = "" if best is None else (
        f"It achieves the following results on the evaluation set (epoch {best['epoch']:g}, step {best['step']}):\n"
        f"- Loss: {best['loss']:.4f}\n- Precision: {best['precision']:.4f}\n- Recall: {best['recall']:.4f}\n"
        f"- F1: {best['f1']:.4f}\n- Accuracy: {best['accuracy']:.4f}\n")
    test = summary.get("test")
    if test:
        results += (f"\nOn the test set: precision {test['precision']:.4f}, recall {test['recall']:.4f}, "
                    f"F1 {test['f1']:.4f}, accuracy {test['accuracy']:.4f}.\n")
    samples_md, samples_html = sample_predictions(summary.get("samples") or [], title)
    card = f"""---
library_name: transformers
tags:
- token-classification
- flax
- generated_from_flaxner
{f"datasets:{chr(10)}- {hub_data}{chr(10)}" if hub_data else ""}---

# {title}

This model is a fine-tuned version of {base} on {describe_source(d)}, trained with flaxner (JAX/Flax).
{data_line}
{results}
{samples_md}## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: {t.learning_rate:g}
- train_batch_size: {t.batch_size}
- eval_batch_size: {t.eval_batch_size}
- seed: {t.seed}
- optimizer: Adam with betas=({t.adam_b1},{t.adam_b2}) and epsilon={t.adam_eps:g}, weight decay {t.weight_decay:g}
- max_grad_norm: {t.max_grad_norm:g}
- lr_scheduler_type: linear (warm-up {f"ratio: {t.warmup_ratio:g}" if t.warmup_ratio else f"steps: {t.warmup_steps}"})
{f"- gradient_accumulation_steps: {t.grad_accum}{chr(10)}- total_train_batch_size: {t.batch_size * t.grad_accum}{chr(10)}" if t.grad_accum > 1 else ""}\
{f"- early stopping: patience {t.patience} evaluations{' (stopped early)' if summary.get('stopped_early') else ''}{chr(10)}" if t.patience else ""}\
- num_epochs: {t.epochs}
- batching: {t.batching}, loss divided per {summary.get('loss_norm', t.loss_norm)}
- padded lengths: {summary.get('buckets', list(cfg.data.buckets))}
- dtype: {cfg.model.dtype}
- devices: {summary.get('devices', 1)}

### Training results

{epoch_table(hist)}

### Framework versions

{_versions()}
"""
    for folder in (rd.path, rd.model) if rd.model.is_dir() else (rd.path,):
        (folder / rd.card.name).write_text(card)
        (folder / rd.samples.name).unlink(missing_ok=True)
        if samples_html:
            (folder / rd.samples.name).write_text(samples_html, encoding="utf-8")
