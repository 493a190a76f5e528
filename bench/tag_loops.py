"""The plain-loop contenders of `bench.tag_speed` (PyTorch and ONNX Runtime) and the F1 of every contender on
CoNLL-2003 gold words.

The loop is the same for both engines: the fast (Rust) tokenizer of the model's folder with offsets, texts sorted
by length, batches of 32 padded to their longest text, truncated at 512 sub-tokens, the forward, argmax. It keeps
each text's labels and offsets and nothing more (no word grouping, no entities, no windows past 512: a lower bound
on what a user's own loop needs). Each word then takes the label of its first sub-token, as `flaxner eval` scores.

The ONNX model is exported from the HF folder with `torch.onnx.export` (the TorchScript exporter, `dynamo=False`:
it needs no onnxscript; dynamic batch and sequence axes, eager attention) and quantized to int8 with
`onnxruntime.quantization.quantize_dynamic` (QInt8 weights). Needs `pip install 'flaxner[bench]'`."""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

BATCH = 32
MAX_LENGTH = 512
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = True) -> dict:
    """`out_dir`/model.onnx (fp32) and, with `int8`, model.int8.onnx from the HF token-classification folder;
    returns their sizes in MiB and the seconds each step took."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / ONNX_FILES["onnx"]
    t0 = time.perf_counter()
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(["flaxner exports this model", "and a second text, longer, so that the first one is padded"],
              padding=True, return_tensors="pt")
    # the inputs the model takes, in the order of its forward's parameters (DistilBERT has no token_type_ids)
    names = [p for p in inspect.signature(model.forward).parameters if p in INPUTS and p in enc]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings from the traced Python branches
        torch.onnx.export(model, tuple(enc[n] for n in names), str(fp32), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    out = {"export_s": time.perf_counter() - t0, "inputs": names, "fp32_mib": fp32.stat().st_size / 2**20}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        t0 = time.perf_counter()
        q = out_dir / ONNX_FILES["onnx-int8"]
        quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8)
        out.update(quantize_s=time.perf_counter() - t0, int8_mib=q.stat().st_size / 2**20)
    return out


class Batcher:
    """The model folder's Rust tokenizer, set to pad each batch to its longest text and truncate at 512 (or the
    model's positions, if fewer)."""

    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        conf = model_dir / "tokenizer_config.json"
        pad = json.loads(conf.read_text()).get("pad_token") if conf.is_file() else None
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self.tok.token_to_id(pad) if pad else None
        self.tok.enable_padding(pad_id=pad_id or 0, pad_token=pad or "[PAD]")
        positions = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", MAX_LENGTH)
        self.tok.enable_truncation(min(MAX_LENGTH, positions))

    def __call__(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The batch's inputs (int64 [B, L]) and offsets ([B, L, 2])."""
        encs = self.tok.encode_batch(list(texts))
        inputs = {"input_ids": np.array([e.ids for e in encs], np.int64),
                  "attention_mask": np.array([e.attention_mask for e in encs], np.int64),
                  "token_type_ids": np.array([e.type_ids for e in encs], np.int64)}
        return inputs, np.array([e.offsets for e in encs], np.int64)


def sorted_loop(texts: Sequence[str], batcher: Batcher, forward: Callable[[dict], np.ndarray]) -> list[tuple]:
    """(labels, offsets) of each text's sub-tokens (special tokens included), in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list = [None] * len(texts)
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        inputs, offsets = batcher([texts[i] for i in idx])
        labels = forward(inputs).argmax(-1)
        lengths = inputs["attention_mask"].sum(1)
        for r, i in enumerate(idx):
            out[i] = (labels[r, :lengths[r]], offsets[r, :lengths[r]])
    return out


def onnx_forward(path: str | Path, threads: int | None = None) -> Callable[[dict], np.ndarray]:
    """An ONNX Runtime CPU session on `threads` intra-op threads (default: this process' cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cores()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda inputs: sess.run(None, {n: inputs[n] for n in names})[0]


def torch_forward(model_dir: str | Path) -> Callable[[dict], np.ndarray]:
    """PyTorch's model of the folder (its model.safetensors), no_grad."""
    import torch
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    torch.set_grad_enabled(False)
    names = [p for p in inspect.signature(model.forward).parameters if p in INPUTS]
    return lambda inputs: model(**{n: torch.from_numpy(inputs[n]) for n in names}).logits.numpy()


def id2label(model_dir: str | Path) -> list[str]:
    conf = json.loads((Path(model_dir) / "config.json").read_text())
    return [conf["id2label"][str(i)] for i in range(len(conf["id2label"]))]


def first_subtoken_tags(labels: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]],
                        names: Sequence[str]) -> list[str]:
    """Each word's tag: the label of the first sub-token that starts inside it ("O" for a word past the
    truncation)."""
    real = offsets[:, 1] > offsets[:, 0]  # special tokens have empty offsets
    starts, labels = offsets[real, 0], labels[real]
    word_start = np.array([a for a, _ in spans], np.int64)
    word_end = np.array([b for _, b in spans], np.int64)
    k = np.searchsorted(starts, word_start)
    hit = k < len(starts)
    hit[hit] &= starts[k[hit]] < word_end[hit]
    return [names[labels[j]] if h else "O" for j, h in zip(k, hit)]


# --- CoNLL-2003 gold words --------------------------------------------------------------------------------------

def test_sentences() -> tuple[list[list[str]], list[list[str]]]:
    """The shipped CoNLL-2003 test split: words and IOB2 tags of each sentence."""
    from flaxner.data.labels import CONLL_LABELS
    from flaxner.data.splits import BUILTIN_DIR, find_split_file, read_conll

    s = read_conll(find_split_file(BUILTIN_DIR, "test"))
    return s["tokens"], [[CONLL_LABELS[t] for t in tags] for tags in s["ner_tags"]]


def gold_lines(picks: Sequence[Sequence[int]]) -> tuple[list[list[list[tuple[int, int]]]], list[list[str]]]:
    """For a corpus whose line i joins the test sentences picks[i] = (first, count) by single spaces: each line's
    word spans per sentence, and the gold tags of every sentence in corpus order."""
    from bench.tag_vs_eval import join_document

    words, tags = test_sentences()
    spans, gold = [], []
    for a, k in picks:
        spans.append(join_document(words[a:a + k], "spaces")[1])
        gold.extend(tags[a:a + k])
    return spans, gold


def f1(picks: Sequence[Sequence[int]], tags_of_line: Callable[[int, list[tuple[int, int]]], list[str]]) -> float:
    """Entity F1 (seqeval's, as `flaxner eval`) over the corpus' sentences; `tags_of_line(i, spans)` tags the
    words of line i given their character spans."""
    from flaxner.training.evaluate import compute_metrics

    spans, gold = gold_lines(picks)
    pred = []
    for i, sents in enumerate(spans):
        tags = tags_of_line(i, [w for sp in sents for w in sp])
        for sp in sents:
            pred.append(tags[:len(sp)])
            tags = tags[len(sp):]
    return compute_metrics(gold, pred)["f1"]


def f1_of_entities(picks, entities: Sequence[list[dict]], type_key: str = "label") -> float:
    """F1 of entities with character offsets (flaxner's, the pipeline's) mapped onto the gold words they overlap."""
    from bench.tag_vs_eval import tags_on_words

    return f1(picks, lambda i, spans: tags_on_words(entities[i], spans, type_key))


def f1_of_labels(picks, results: Sequence[tuple], names: Sequence[str]) -> float:
    """F1 of `sorted_loop`'s sub-token labels, each word taking its first sub-token's."""
    return f1(picks, lambda i, spans: first_subtoken_tags(*results[i], spans, names))
