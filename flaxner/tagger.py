"""Tag texts or a JSONL corpus with a trained model: sub-token windows packed longest-first into a few fixed
shapes, tokenized on a background thread while the compiled forward runs, entities put back in input order."""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flaxner.config import TagConfig
from flaxner.tagio import LineReader, OutputWriter, Record, TagInputError, default_output, input_format, \
    output_line, parse_line, parse_shard
from flaxner.windows import collate, encode, entities_many, pack, rows_for, rows_per_batch, scatter, small_rows

log = logging.getLogger(__name__)
_IOB2 = re.compile(r"O|[BI]-.+")


def check_iob2(labels: Sequence[str]) -> None:
    """Refuse a label map whose tags are not IOB2 (e.g. the LABEL_0.. of a model without a classifier)."""
    bad = [lab for lab in labels if not _IOB2.fullmatch(lab)]
    if bad or not labels:
        raise ValueError(f"the model's label map {list(labels)} is not IOB2 (O, B-X, I-X); bad: {bad}")


def check_tag_config(cfg: TagConfig, max_positions: int) -> None:
    if cfg.aggregation not in ("first", "average", "max"):
        raise ValueError(f"aggregation: expected first, average or max, got {cfg.aggregation!r}")
    if list(cfg.buckets) != sorted(set(cfg.buckets)) or not cfg.buckets:
        raise ValueError(f"tag.buckets: must be strictly increasing, got {list(cfg.buckets)}")
    if not 3 <= cfg.max_length <= min(max_positions, cfg.buckets[-1]):
        raise ValueError(f"max_length {cfg.max_length}: must be in [3, {min(max_positions, cfg.buckets[-1])}] "
                         f"(the model's positions and the largest bucket)")
    if not 0 <= cfg.stride < cfg.max_length - 2:
        raise ValueError(f"stride {cfg.stride}: must be in [0, max_length - 2)")


class Tagger:
    """A compiled token-classification model over texts: `tag(texts)`, `tag_file(path)`, or called on a dict
    of column arrays (`ds.map_batches(Tagger, fn_constructor_args=(model_dir,))`)."""

    def __init__(self, model_dir: str | Path, config: TagConfig | None = None, text_field: str = "text", **overrides):
        from flaxner.model import load_trained

        cfg = dataclasses.replace(config or run_tag_config(model_dir), **overrides)
        if not Path(model_dir).exists():
            raise FileNotFoundError(f"{model_dir}: no such model folder")
        dtype = _resolve_dtype(cfg.dtype)
        model, params, tok, labels = load_trained(model_dir, dtype)
        self._setup(model, params, tok, labels, dataclasses.replace(cfg, dtype=dtype), text_field)
        self.model_dir = str(model_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config: TagConfig | None = None, **overrides) -> Tagger:
        """Load a run folder (holding `model/`) or an HF BERT token-classification folder."""
        return cls(model_dir, config, **overrides)

    @classmethod
    def from_model(cls, model, params, tokenizer, labels: Sequence[str], config: TagConfig | None = None,
                   text_field: str = "text") -> Tagger:
        """Wrap an in-memory model (after training, in a notebook)."""
        self = cls.__new__(cls)
        cfg = config or TagConfig()
        self._setup(model, params, tokenizer, labels, dataclasses.replace(cfg, dtype=_resolve_dtype(cfg.dtype)),
                    text_field)
        self.model_dir = ""
        return self

    def _setup(self, model, params, tokenizer, labels, cfg: TagConfig, text_field: str) -> None:
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from tokenizers import Tokenizer

        from flaxner.runtime import enable_compilation_cache

        check_iob2(labels)
        check_tag_config(cfg, model.config.max_position_embeddings)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast tokenizer (tokenizer.json) is needed for word ids and character offsets")
        enable_compilation_cache(cfg.compilation_cache)
        self.cfg, self.labels, self.text_field = cfg, list(labels), text_field
        # A private copy of the Rust tokenizer with any truncation/padding of tokenizer.json switched off.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        devices = jax.local_devices()
        self.n_devices = len(devices)
        mesh = Mesh(np.array(devices), ("data",))
        data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        if cfg.dtype != "float32":
            params = jax.tree.map(lambda x: x.astype(cfg.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                  params)
        self.params = jax.device_put(params, repl)
        first = cfg.aggregation == "first"

        def forward(params, input_ids, attention_mask):
            logits = model(input_ids, attention_mask, params=params, train=False).logits  # [batch, seq, labels]
            probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            if first:
                return probs.argmax(-1).astype(jnp.int32), probs.max(-1)
            return probs

        self._forward = jax.jit(forward, in_shardings=(repl, data, data), out_shardings=data)
        self._data_sharding = data
        self.shapes: set[tuple[int, int]] = set()
        self.compiled_ahead = 0  # shapes compiled on the compile threads
        self.stats = {"docs": 0, "tokens": 0, "windows": 0, "long_docs": 0}

    @property
    def compiles(self) -> int:
        """Distinct batch shapes run so far (each compiles once)."""
        return len(self.shapes)

    def batch_shapes(self, buckets: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """The full and the small batch shape of each bucket (default: all), shortest bucket first."""
        out = []
        for b in sorted(set(self.cfg.buckets if buckets is None else buckets)):
            full = rows_per_batch(b, self.cfg.batch_size, self.cfg.batch_tokens, self.n_devices)
            out += [(n, b) for n in sorted({full, small_rows(full, self.n_devices)}, reverse=True)]
        return out

    def precompile(self, buckets: Iterable[int] | None = None) -> None:
        """Compile the batch shapes of these buckets (default: all) now, so that timing or serving later
        compiles nothing."""
        import jax

        for shape in self.batch_shapes(buckets):
            ids = np.full(shape, self.pad_id, dtype=np.int32)
            self.shapes.add(shape)
            jax.block_until_ready(self._forward(self.params, ids, np.zeros_like(ids)))

    def _compile_ahead(self):
        """A `Precompiler` working through the shapes not compiled yet (`tag.compile_workers` threads)."""
        import jax

        from flaxner.precompile import Precompiler, workers_for
        from flaxner.runtime import abstract

        pre = Precompiler(workers_for(self.cfg.compile_workers, jax.local_devices()[0].platform))
        if pre.workers:
            params = abstract(self.params)
            for shape in self.batch_shapes():
                if shape not in self.shapes:
                    spec = jax.ShapeDtypeStruct(shape, np.int32, sharding=self._data_sharding)
                    pre.submit(shape, self._forward, params, spec, spec)
        return pre

    @property
    def max_compiles(self) -> int:
        """The bound on `compiles`: a full and a small batch shape per bucket."""
        return 2 * len(self.cfg.buckets)

    def tag(self, texts: Sequence[str]) -> list[list[dict]]:
        """Entities of each text: [{"text", "label", "start", "end", "score"}] with character offsets."""
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str")
        records = (Record(i + 1, i, t) for i, t in enumerate(texts))
        return [ents for _, ents in self.stream(records)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch-engine form (Ray Data `map_batches`): adds an `entities` column to a dict of columns."""
        texts = [str(t) for t in batch[self.text_field]]
        ents = self.tag(texts)
        col = np.empty(len(ents), dtype=object)
        for i, e in enumerate(ents):
            col[i] = e
        return {**batch, "entities": col}

    def stream(self, records: Iterable[Record]) -> Iterator[tuple[Record, list[dict] | None]]:
        """(record, entities) in input order; records with an error come back with None."""
        q: queue.Queue = queue.Queue(maxsize=self.cfg.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(iter(records), q, stop), daemon=True,
                                  name="flaxner-tokenize")
        worker.start()
        waiting: deque = deque()     # (record, DocState | None) in input order
        in_flight: deque = deque()   # (device outputs, rows)
        pre = self._compile_ahead()
        try:
            done = False
            while not done or in_flight:
                item = None
                if not done:
                    try:
                        item = q.get(block=not in_flight)
                    except queue.Empty:
                        pass
                if item is None:
                    self._collect(*in_flight.popleft())
                elif item[0] == "docs":
                    waiting.extend(item[1])
                elif item[0] == "batch":
                    _, bucket, ids, mask, rows = item
                    if ids.shape not in self.shapes:
                        pre.claim(ids.shape)
                        self.shapes.add(ids.shape)
                    in_flight.append((self._forward(self.params, ids, mask), rows))
                    if len(in_flight) > 1:
                        self._collect(*in_flight.popleft())
                elif item[0] == "error":
                    raise item[1]
                else:
                    done = True
                ready = []
                while waiting and (waiting[0][1] is None or waiting[0][1].pending == 0):
                    ready.append(waiting.popleft())
                if ready:  # all documents completed by this batch at once: one numpy pass over their tokens
                    ents = iter(entities_many([d for r, d in ready if r.error is None], self.labels,
                                              self.cfg.aggregation))
                    for rec, _ in ready:
                        yield rec, (None if rec.error is not None else next(ents))
        finally:
            stop.set()
            pre.close()  # compiles not started are dropped; the next stream queues them again
            self.compiled_ahead += len(pre.done)

    def _collect(self, out, rows) -> None:
        if isinstance(out, tuple):
            pred, score = (np.asarray(x) for x in out)
        else:
            pred, score = np.asarray(out), None
        for r, row in enumerate(rows):
            scatter(row, pred[r], None if score is None else score[r])

    def _produce(self, records: Iterator[Record], q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise SystemExit  # the consumer has gone; end this thread quietly

        cfg = self.cfg
        carry: list = []
        try:
            while True:
                chunk = [r for _, r in zip(range(cfg.lookahead), records)]
                if not chunk:
                    break
                docs = encode(self.backend, chunk)
                rows = []
                for _, doc in docs:
                    if doc is not None:
                        doc_rows = rows_for(doc, cfg.max_length - 2, cfg.stride)
                        doc.pending = len(doc_rows)
                        rows.extend(doc_rows)
                        self.stats["tokens"] += len(doc.ids)
                        self.stats["long_docs"] += len(doc_rows) > 1
                self.stats["docs"] += len(chunk)
                self.stats["windows"] += len(rows)
                put(("docs", docs))
                # A bucket's tail waits for the next chunk's rows once, never twice (bounded reorder buffer).
                batches, carry = pack(carry + rows, cfg.buckets, cfg.batch_size, cfg.batch_tokens, self.n_devices)
                for r in carry:
                    r.carried = True
                for b, rs, n in batches:
                    put(("batch", b, *self._collate(rs, b, n), rs))
            for b, rs, n in pack(carry, cfg.buckets, cfg.batch_size, cfg.batch_tokens, self.n_devices, flush=True)[0]:
                put(("batch", b, *self._collate(rs, b, n), rs))
            put(("end",))
        except SystemExit:
            return
        except BaseException as e:  # surfaced in the consumer
            try:
                put(("error", e))
            except SystemExit:
                return

    def _collate(self, rows, bucket: int, n_rows: int):
        return collate(rows, bucket, n_rows, self.cls_id, self.sep_id, self.pad_id)

    def tag_file(self, path: str, output: str | None = None, *, id_field: str = "id", keep_fields: bool = False,
                 fmt: str = "auto", shard: str | None = None, resume: bool = False, on_error: str = "record",
                 progress: bool = True, commit_every: float = 5.0) -> dict:
        """Tag a JSONL/text file (or '-' for stdin) into OUTPUT, one line per input line; returns the summary."""
        from flaxner.tagio import Progress

        output = output or default_output(path)
        fmt = input_format(path, fmt)
        shard_t = parse_shard(shard)
        key = {"input": str(Path(path).resolve()) if path != "-" else "-", "shard": list(shard_t), "format": fmt,
               "text_field": self.text_field, "id_field": id_field, "keep_fields": keep_fields,
               "model": self.model_dir, "aggregation": self.cfg.aggregation, "max_length": self.cfg.max_length,
               "stride": self.cfg.stride}
        writer = OutputWriter(output, key, resume)
        reader = LineReader(path, shard_t, writer.resume_point)
        counts = {"lines": writer.lines_done, "errors": 0, "warnings": 0, "entities": 0}
        start_tokens, t0 = self.stats["tokens"], time.perf_counter()
        records = (parse_line(line, fmt, self.text_field, id_field) for line in reader)
        last_commit, last = time.monotonic(), None
        try:
            with Progress(reader, self.stats, counts, enabled=progress) as bar:
                for rec, ents in self.stream(records):
                    if rec.error is not None:
                        if on_error == "fail":
                            raise TagInputError(rec.error)
                        counts["errors"] += 1
                    else:
                        counts["entities"] += len(ents)
                    counts["warnings"] += rec.warning is not None
                    writer.write(output_line(rec, ents, keep_fields))
                    counts["lines"] += 1
                    last = rec
                    if time.monotonic() - last_commit >= commit_every:
                        writer.commit(last.line + 1, last.resume_at)
                        last_commit = time.monotonic()
                    bar.tick()
            writer.finish()
        except BaseException:
            if last is not None:
                writer.commit(last.line + 1, last.resume_at)
            writer.close()
            raise
        seconds = time.perf_counter() - t0
        tokens = self.stats["tokens"] - start_tokens
        return {**counts, "output": output, "seconds": round(seconds, 3), "tokens": tokens,
                "docs_per_s": round(counts["lines"] / max(seconds, 1e-9), 1),
                "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "compiles": self.compiles,
                "shapes": sorted(self.shapes), "long_docs": self.stats["long_docs"]}


def _resolve_dtype(dtype: str) -> str:
    """'auto': bfloat16 on accelerators, float32 on CPU."""
    if dtype != "auto":
        return dtype
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def run_tag_config(model_dir: str | Path) -> TagConfig:
    """The `tag:` section of a run folder's config.yaml (how it was trained to be used), else the defaults."""
    from flaxner.config import load_config

    saved = Path(model_dir) / "config.yaml"
    return load_config(saved).tag if saved.is_file() else TagConfig()


def add_arguments(p) -> None:
    """Declare the options of `flaxner tag`."""
    p.add_argument("input", nargs="+", help="JSONL (.jsonl, .jsonl.gz), text with one document per line (.txt), or - "
                                            "for stdin (several files or globs: --engine ray)")
    p.add_argument("--model", required=True, help="run folder of `flaxner train`, or an HF BERT token-classification folder")
    p.add_argument("-o", "--output", default=None, help="default: INPUT with .entities.jsonl (stdout for stdin)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id", help="copied as `id`; the line number when absent")
    p.add_argument("--keep-fields", action="store_true", help="copy the input fields into each output line")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "txt"))
    p.add_argument("--aggregation", choices=("first", "average", "max"), default=None,
                   help="sub-token predictions -> word label (default: first, as trained)")
    p.add_argument("--max-length", type=int, default=None, help="sub-tokens per window, specials included")
    p.add_argument("--stride", type=int, default=None, help="sub-tokens shared by neighbouring windows")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch when --batch-tokens is 0")
    p.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per batch (rows = this / length)")
    p.add_argument("--lookahead", type=int, default=None, help="documents read ahead and sorted by length")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--shard", default=None, metavar="I/N", help="tag only slice I of N (outputs concatenate)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last committed line")
    p.add_argument("--on-error", default="record", choices=("record", "fail"),
                   help="record: bad lines get an `error` field; fail: stop at the first")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="tag in N processes at once, one slice of the input each, then join their outputs in "
                        "order (one process' Python work caps it well below a GPU's pace; see flaxner/tagprocs.py)")
    from flaxner import raytag

    raytag.add_arguments(p)


def run_cli(args) -> int:
    """`flaxner tag`: check the input and the model before any work, tag, print the summary."""
    import json
    import sys

    if args.engine == "ray":
        from flaxner import raytag

        return raytag.run_cli(args)
    if len(args.input) > 1:
        raise ValueError(f"{len(args.input)} inputs: one at a time, or several (and globs) with --engine ray")
    args.input = args.input[0]
    if args.input != "-" and not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: no such input file")
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"{args.model}: no such model folder")
    parse_shard(args.shard)
    if args.processes < 1:
        raise ValueError(f"--processes {args.processes}: must be at least 1")
    if args.processes > 1:
        from flaxner.tagprocs import run_processes

        return run_processes(args)
    overrides = {k: getattr(args, k) for k in ("aggregation", "max_length", "stride", "batch_size", "batch_tokens",
                                               "lookahead", "dtype") if getattr(args, k) is not None}
    tagger = Tagger.from_pretrained(args.model, text_field=args.text_field, **overrides)
    summary = tagger.tag_file(args.input, args.output, id_field=args.id_field, keep_fields=args.keep_fields,
                              fmt=args.format, shard=args.shard, resume=args.resume, on_error=args.on_error,
                              progress=not args.no_progress)
    print(json.dumps({"summary": summary}), file=sys.stderr)
    return 0
