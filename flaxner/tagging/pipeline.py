"""Records in, (record, entities) out in input order: a thread tokenizes and packs windows into batches while the
consumer runs the compiled forward, and documents are released as soon as their last window is back.

The threads pass typed messages (`Docs`, `Batch`, `Failed`, `End`) through a bounded queue; only the tokenizer
thread writes the `TagStats`."""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from flaxner.config import TagConfig
from flaxner.data.rows import cuts_sentences, side_context
from flaxner.tagging.forward import CompiledForward
from flaxner.tagging.reading import Record
from flaxner.tagging.packing import collate, pack
from flaxner.tagging.windows import DocState, Row, averages, encode, entities_many, join_lines, rows_for, split_parts, \
    view_rows


@dataclass
class TagStats:
    """Running totals of a Tagger (written by its tokenizer thread only)."""

    docs: int = 0
    tokens: int = 0
    windows: int = 0
    long_docs: int = 0


@dataclass(slots=True)
class Docs:
    """A chunk of records in input order, each with its document (None: the record has an error)."""

    docs: list[tuple[Record, DocState | None]]


@dataclass(slots=True)
class Batch:
    bucket: int
    ids: np.ndarray   # [rows, bucket] int32
    mask: np.ndarray  # [rows, bucket] int32
    rows: list[Row]


@dataclass(slots=True)
class Failed:
    """The tokenizer thread failed: raised again in the consumer."""

    error: BaseException


@dataclass(slots=True)
class End:
    pass


@dataclass
class Tokens:
    """How texts become sub-token ids: the Rust tokenizer and its special ids."""

    backend: object
    cls_id: int
    sep_id: int
    pad_id: int


class Pipeline:
    def __init__(self, tokens: Tokens, forward: CompiledForward, cfg: TagConfig, labels: Sequence[str],
                 stats: TagStats, sentences=None):
        self.tokens, self.forward, self.cfg, self.labels, self.stats = tokens, forward, cfg, list(labels), stats
        self.sentences = sentences  # the run's learnt sentence starts (flaxner.data.sentences), None: the rules'

    def stream(self, records: Iterable[Record]) -> Iterator[tuple[Record, list[dict] | None]]:
        """(record, entities) in input order; records with an error come back with None."""
        q: queue.Queue = queue.Queue(maxsize=self.cfg.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(iter(records), q, stop), daemon=True,
                                  name="flaxner-tokenize")
        worker.start()
        waiting: deque = deque()     # (record, DocState | None) in input order
        in_flight: deque = deque()   # (device outputs, rows)
        fwd = self.forward
        pre = fwd.compile_ahead()
        try:
            done = False
            while not done or in_flight:
                msg = None
                if not done:
                    try:
                        msg = q.get(block=not in_flight)
                    except queue.Empty:
                        pass
                if msg is None:
                    fwd.collect(*in_flight.popleft())
                elif isinstance(msg, Docs):
                    waiting.extend(msg.docs)
                elif isinstance(msg, Batch):
                    in_flight.append((fwd.run(msg.ids, msg.mask, pre), msg.rows))
                    if len(in_flight) > 1:
                        fwd.collect(*in_flight.popleft())
                elif isinstance(msg, Failed):
                    raise msg.error
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
            fwd.compiled_ahead += len(pre.done)

    def _produce(self, records: Iterator[Record], q: queue.Queue, stop: threading.Event) -> None:
        def put(msg) -> None:
            while not stop.is_set():
                try:
                    q.put(msg, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise SystemExit  # the consumer has gone; end this thread quietly

        cfg, tok, stats, n_dev = self.cfg, self.tokens, self.stats, self.forward.n_devices
        pack_length = self.forward.pack_length

        def batch(b: int, rows: list[Row], n: int) -> Batch:
            return Batch(b, *collate(rows, b, n, tok.cls_id, tok.sep_id, tok.pad_id), rows)

        carry: list = []
        held: list[Record] = []  # the last document's lines of a chunk, which the next chunk may continue
        try:
            while True:
                fresh = list(itertools.islice(records, cfg.lookahead))
                chunk = held + fresh
                if not chunk:
                    break
                chunk, held = split_last_document(chunk, cfg.lookahead) if fresh and cfg.document_field else (chunk, [])
                docs = encode(tok.backend, chunk, words=cfg.words, context=cfg.context, sentences=self.sentences,
                              thresholds=cfg.sentence_thresholds)
                rows = []
                for doc in documents(docs, cfg.context, cfg.lookahead):
                    doc_rows = view_rows(rows_for(doc, cfg.max_length - 2, cfg.stride,
                                                  side_context(cfg.context, cfg.context_size), cfg.segment_length),
                                         cfg.context_views)
                    doc.argmax_at_end = averages(cfg) and cfg.aggregation == "first"
                    doc.pending = len(doc_rows)
                    if not doc_rows and doc.parts is not None:
                        split_parts(doc)
                    rows.extend(doc_rows)
                    stats.tokens += len(doc.ids)
                    stats.long_docs += len(doc_rows) > 1
                stats.docs += len(chunk)
                stats.windows += len(rows)
                put(Docs(docs))
                # A bucket's tail waits for the next chunk's rows once, never twice (bounded reorder buffer).
                batches, carry = pack(carry + rows, cfg.buckets, cfg.batch_size, cfg.batch_tokens, n_dev,
                                      pack_length=pack_length)
                for r in carry:
                    r.carried = True
                for b, rs, n in batches:
                    put(batch(b, rs, n))
            for b, rs, n in pack(carry, cfg.buckets, cfg.batch_size, cfg.batch_tokens, n_dev, flush=True,
                                 pack_length=pack_length)[0]:
                put(batch(b, rs, n))
            put(End())
        except SystemExit:
            return
        except BaseException as e:  # surfaced in the consumer
            try:
                put(Failed(e))
            except SystemExit:
                return


def split_last_document(chunk: list[Record], cap: int) -> tuple[list[Record], list[Record]]:
    """`chunk` without the lines of its last document (`--document-field`) that the next chunk may continue: the
    part past its last whole piece of `cap` lines (a longer document is cut every `cap` lines from its start, the
    same cuts wherever a shard or chunk begins)."""
    key = chunk[-1].document
    if key is None:
        return chunk, []
    k = len(chunk)
    while k > 0 and chunk[k - 1].document == key:
        k -= 1
    keep = k + (len(chunk) - k) // cap * cap
    return chunk[:keep], chunk[keep:]


def documents(docs: list[tuple[Record, DocState | None]], context: str, cap: int) -> Iterator[DocState]:
    """The documents to plan rows for, in input order: each record's own, or one joined DocState for each run of
    consecutive records with the same `document` (`--document-field`), cut every `cap` lines; every record of a
    run but its last is marked `doc_end = False`, so that the output commits only after a whole document."""
    run: list[tuple[Record, DocState | None]] = []
    for i, (rec, doc) in enumerate(docs):
        run.append((rec, doc))
        nxt = docs[i + 1][0] if i + 1 < len(docs) else None
        if rec.document is not None and nxt is not None and nxt.document == rec.document and len(run) < cap:
            rec.doc_end = False
            continue
        members = [d for _, d in run if d is not None]
        run = []
        if len(members) > 1:
            yield join_lines(members, cuts_sentences(context))
        elif members:
            yield members[0]
