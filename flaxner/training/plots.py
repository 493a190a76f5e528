"""matplotlib figures of `flaxner.training.analysis` data for the explore notebook; each takes data and returns a Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from flaxner.training.analysis import Confusion


def plot_split_stats(stats: dict[str, dict]) -> Figure:
    """Entities per type and split: counts, and each type's share of its split's entities."""
    types = sorted({t for s in stats.values() for t in s["per_type"]})
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_n, ax_p = fig.subplots(1, 2)
    x, width = np.arange(len(types)), 0.8 / max(len(stats), 1)
    for k, (name, s) in enumerate(stats.items()):
        counts = np.array([s["per_type"].get(t, 0) for t in types])
        label = f"{name} ({s['sentences']} sentences)"
        ax_n.bar(x + k * width, counts, width, label=label)
        ax_p.bar(x + k * width, counts / max(counts.sum(), 1), width, label=label)
    for ax, title in ((ax_n, "entities per type"), (ax_p, "share of the split's entities")):
        ax.set_xticks(x + width * (len(stats) - 1) / 2, types)
        ax.set_title(title)
    ax_n.legend(fontsize=8)
    return fig


def plot_length_histogram(lengths: np.ndarray, buckets: Sequence[int], costs: Sequence[dict] = ()) -> Figure:
    """Sub-token lengths (with [CLS] and [SEP]) of a split, the bucket lengths batches are padded to as lines, and
    the padding each bucket costs (from `analysis.bucket_costs`)."""
    lengths = np.asarray(lengths)
    top = next((b for b in buckets if b >= lengths.max()), buckets[-1]) if len(lengths) else buckets[0]
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.hist(lengths, bins=np.arange(0, top + 2, max(1, top // 60)), color="#577590")
    cost = {c["bucket"]: c for c in costs}
    for b in (b for b in buckets if b <= top):
        ax.axvline(b, color="#d62828", ls="--", lw=1)
        note = f"{b}" + (f": {cost[b]['batches']} batches, {cost[b]['padding']:.0%} padding" if b in cost else "")
        ax.text(b, 0.98, note, transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="top", fontsize=8,
                color="#d62828", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    if costs:
        real = sum(c["real_tokens"] for c in costs)
        padded = sum(c["padded_tokens"] for c in costs)
        ax.set_title(f"{len(lengths)} sequences; one epoch pads {real} real sub-tokens to {padded} "
                     f"({1 - real / padded:.0%} padding)")
    ax.set_xlabel("sub-tokens per sequence")
    ax.set_ylabel("sequences")
    return fig


def plot_training(curves: dict[str, list[dict]]) -> Figure:
    """Loss (logged training steps, per-epoch train and validation means) and validation scores per epoch."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_l, ax_f = fig.subplots(1, 2)
    tr, ev = curves["train"], curves["eval"]
    if tr:
        ax_l.plot([r["epoch"] for r in tr], [r["loss"] for r in tr], color="#adb5bd", lw=1, label="train (logged)")
    if ev:
        ep = [r["epoch"] for r in ev]
        ax_l.plot(ep, [r["train_loss"] for r in ev], "o-", label="train (epoch mean)")
        ax_l.plot(ep, [r["loss"] for r in ev], "s-", label="validation")
        for key, style in (("f1", "o-"), ("precision", "^--"), ("recall", "v--")):
            ax_f.plot(ep, [r[key] for r in ev], style, label=key)
        best = max(ev, key=lambda r: r["f1"])
        ax_f.annotate(f"best F1 {best['f1']:.3f}", (best["epoch"], best["f1"]), textcoords="offset points",
                      xytext=(0, 8), ha="center", fontsize=8)
    ax_l.set(title="loss", xlabel="epoch")
    ax_f.set(title="validation (seqeval, entity level)", xlabel="epoch", ylim=(0, 1.05))
    ax_f.margins(x=0.15)
    for ax in (ax_l, ax_f):
        ax.legend(fontsize=8)
    return fig


def plot_per_type(per_type: dict[str, dict]) -> Figure:
    """Precision, recall and F1 bars per entity type, support under each type."""
    types = list(per_type)
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(types))
    for k, key in enumerate(("precision", "recall", "f1")):
        bars = ax.bar(x + (k - 1) * 0.27, [per_type[t][key] for t in types], 0.27, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"{t}\n(n={per_type[t]['support']})" for t in types])
    ax.set(ylim=(0, 1.1), title="per entity type")
    ax.legend(fontsize=8, ncols=3)
    return fig


def plot_confusion(conf: Confusion) -> Figure:
    """The span confusion matrix as a heat map with counts; rows gold, columns predicted."""
    n_rows, n_cols = conf.counts.shape
    fig = Figure(figsize=(1.1 * n_cols + 2, 0.8 * n_rows + 1.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(conf.counts, cmap="Blues")
    ax.set_xticks(range(n_cols), conf.cols)
    ax.set_yticks(range(n_rows), conf.rows)
    ax.set(xlabel="predicted", ylabel="gold", title="entity spans (matched by boundaries)")
    limit = conf.counts.max() / 2 if conf.counts.size else 0
    for i in range(n_rows):
        for j in range(n_cols):
            v = int(conf.counts[i, j])
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > limit else "black", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
