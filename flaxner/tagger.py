"""Tag texts or a JSONL corpus with a trained model: sub-token windows packed longest-first into a few fixed
shapes, tokenized on a background thread while the compiled forward runs, entities put back in input order."""

from __future__ import annotations

import dataclasses
import signal
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from flaxner.config import TagConfig
from flaxner.tagio import MAX_LINE_BYTES, RESUME_STDIN, LineReader, OutputWriter, Progress, Record, TagInputError, \
    TagInterrupted, check_output, clean_text, default_output, input_format, output_line, parse_line, parse_shard
from flaxner.windows import collate, encode, entities_many, pack, rows_for, rows_per_batch, scatter, small_rows

log = logging.getLogger(__name__)


@dataclass
class TagStats:
    """Running totals of a Tagger (written by its tokenizer thread only)."""

    docs: int = 0
    tokens: int = 0
    windows: int = 0
    long_docs: int = 0


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
        self.stats = TagStats()

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

    @overload
    def tag(self, texts: str) -> list[dict]: ...

    @overload
    def tag(self, texts: Sequence[str]) -> list[list[dict]]: ...

    def tag(self, texts):
        """Entities of each text: [{"text", "label", "start", "end", "score"}] with character offsets. A single
        str is one text: its list of entities comes back (not one list per character)."""
        if isinstance(texts, str):
            return self.tag([texts])[0]
        records = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str")
            records.append(Record(i + 1, i, clean_text(t)[0]))  # lone surrogates -> U+FFFD, as `flaxner tag`
        out = []
        for rec, ents in self.stream(records):
            if rec.error is not None:
                raise ValueError(f"texts[{rec.id}]: {rec.error}")
            out.append(ents)
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch-engine form (Ray Data `map_batches`): adds an `entities` column to a dict of columns, and an
        `error` column (None where the row was tagged) for a missing, null or non-string text."""
        texts = batch.get(self.text_field)
        n = len(next(iter(batch.values()))) if batch else 0
        records = []
        for i in range(n):
            t = None if texts is None else texts[i]
            rec = Record(i + 1, i, None)
            if isinstance(t, str):
                rec.text = clean_text(t)[0]
            else:
                rec.error = (f"field {self.text_field!r} is " +
                             ("missing" if texts is None else f"a {type(t).__name__}, not a string"))
            records.append(rec)
        ents, errors = np.empty(n, dtype=object), np.empty(n, dtype=object)
        for rec, e in self.stream(records):
            ents[rec.id], errors[rec.id] = e, rec.error
        return {**batch, "entities": ents, "error": errors}

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
                        self.stats.tokens += len(doc.ids)
                        self.stats.long_docs += len(doc_rows) > 1
                self.stats.docs += len(chunk)
                self.stats.windows += len(rows)
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
                 fmt: str = "auto", shard: str | None = None, resume: bool = False, overwrite: bool = False,
                 resume_stdin: bool = False, on_error: str = "record", max_line_bytes: int = MAX_LINE_BYTES,
                 progress: bool = True, commit_every: float = 5.0) -> dict:
        """Tag a JSONL/text file (or '-' for stdin) into OUTPUT, one line per input line; returns the summary.

        `lines`, `errors`, `warnings`, `entities` count the whole output (a resumed run's earlier lines included);
        `this_run` counts what this call tagged. `input_damaged` says why a damaged gzip input ended early."""
        output = output or default_output(path)
        fmt = input_format(path, fmt)
        shard_t = parse_shard(shard)
        check_output(output, path)
        if resume and path == "-" and not resume_stdin:
            raise TagInputError(RESUME_STDIN)
        key = {"input": str(Path(path).resolve()) if path != "-" else "-", "shard": list(shard_t), "format": fmt,
               "text_field": self.text_field, "id_field": id_field, "keep_fields": keep_fields,
               "model": self.model_dir, "aggregation": self.cfg.aggregation, "max_length": self.cfg.max_length,
               "stride": self.cfg.stride, "max_line_bytes": max_line_bytes}
        writer = OutputWriter(output, key, resume, overwrite)
        try:
            reader = LineReader(path, shard_t, writer.resume_point, max_line_bytes,
                                writer.state.get("input") if writer.resume_point else None)
        except BaseException:
            writer.close()
            raise
        before = writer.state.get("counts", {"lines": writer.lines_done, "errors": 0, "warnings": 0,
                                             "entities": 0})
        counts = {"lines": 0, "errors": 0, "warnings": 0, "entities": 0}  # this run's
        start_tokens, t0 = self.stats.tokens, time.perf_counter()
        records = (parse_line(line, fmt, self.text_field, id_field) for line in reader)
        last_commit, last = time.monotonic(), None

        def commit() -> None:
            if last is not None:
                writer.commit(last.line + 1, last.resume_at,
                              {"input": reader.identity(last), "counts": {k: before[k] + counts[k] for k in counts}})

        try:
            with Progress(reader, self.stats, counts, enabled=progress, t0=t0) as bar:
                for rec, ents in self.stream(records):
                    if rec.error is not None and on_error == "fail":
                        raise TagInputError(rec.error)
                    writer.write(output_line(rec, ents, keep_fields, id_field))
                    counts["errors"] += rec.error is not None
                    counts["entities"] += len(ents) if rec.error is None else 0
                    counts["warnings"] += rec.warning is not None
                    counts["lines"] += 1
                    last = rec
                    if time.monotonic() - last_commit >= commit_every:
                        commit()
                        last_commit = time.monotonic()
                    bar.tick()
                seconds = time.perf_counter() - t0
                bar.done(seconds)
            writer.finish()
        except BaseException as e:
            try:
                commit()
            finally:
                writer.close()
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, TagInterrupted):
                signum = getattr(e, "signum", signal.SIGINT)
                where = ("to stdout" if output == "-" else
                         f"and committed to {output}.part; run the same command with --resume to continue")
                raise TagInterrupted(f"interrupted by {signal.Signals(signum).name} after "
                                     f"{before['lines'] + counts['lines']} lines, written {where}", signum) from None
            raise
        tokens = self.stats.tokens - start_tokens
        summary = {k: before[k] + counts[k] for k in counts}
        summary.update(output=output, this_run=dict(counts), resumed_lines=before["lines"],
                       seconds=round(seconds, 3), tokens=tokens,
                       docs_per_s=round(counts["lines"] / max(seconds, 1e-9), 1),
                       tokens_per_s=round(tokens / max(seconds, 1e-9), 1), compiles=self.compiles,
                       shapes=sorted(self.shapes), long_docs=self.stats.long_docs)
        if reader.damage:
            summary["input_damaged"] = reader.damage
        return summary


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
