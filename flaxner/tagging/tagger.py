"""Tag texts or a JSONL corpus with a trained model: sub-token windows packed by length into a few fixed
shapes, tokenized on a background thread while the compiled forward runs, entities put back in input order.

`Tagger` is the facade over `flaxner.tagging` (checks, forward, pipeline, filejob)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from flaxner.config import TagConfig, validate_tag
from flaxner.data.rows import cuts_sentences
from flaxner.data.sentences import load_for
from flaxner.tagging.checks import check_iob2, check_tag_config, resolve_context, resolve_dtype, run_config, \
    run_tag_config
from flaxner.tagging.filejob import tag_file
from flaxner.tagging.forward import CompiledForward
from flaxner.tagging.pipeline import Pipeline, TagStats, Tokens
from flaxner.tagging.reading import Record, clean_text

__all__ = ["Tagger", "TagStats", "check_iob2", "check_tag_config", "run_tag_config"]


class Tagger:
    """A compiled token-classification model over texts: `tag(texts)`, `tag_file(path)`, or called on a dict
    of column arrays (`ds.map_batches(Tagger, fn_constructor_args=(model_dir,))`).

    `forward` is the compiled model (`flaxner.tagging.forward.CompiledForward`); its `fn` attribute, the jitted
    program every batch runs, may be replaced by a function of the same contract (see CompiledForward), and all
    tagging after that runs it: the benchmarks put a stand-in model there to time the host-side work alone."""

    def __init__(self, model_dir: str | Path, config: TagConfig | None = None, text_field: str = "text", **overrides):
        from flaxner.models.checks import check_ids_fit
        from flaxner.models.loading import load_trained_model
        from flaxner.models.registry import family_of
        from flaxner.models.tokenizer import load_tag_tokenizer
        from flaxner.runtime import enable_compilation_cache

        run = run_config(model_dir)  # read once: the tag section and the rows the model was trained on
        cfg = dataclasses.replace(config or (run.tag if run else TagConfig()), **overrides)
        validate_tag(cfg)  # before loading: the model's positions are checked once it is loaded
        if not Path(model_dir).exists():
            raise FileNotFoundError(f"{model_dir}: no such model folder")
        dtype = resolve_dtype(cfg.dtype)
        if cfg.dtype == "auto" and dtype == "mixed":
            logging.getLogger(__name__).info("dtype auto: mixed (bfloat16 products into float32: this CPU has "
                                             "bfloat16 matrix units; --dtype float32 to turn it off)")
        cfg = resolve_context(dataclasses.replace(cfg, dtype=dtype), run)
        # The run's learnt sentence starts (a run folder's sentences.json), beside the rules, where rows keep to
        # sentences (flaxner.data.sentences); without them (or rows that do not keep to sentences) one cut or none.
        sentences = load_for(model_dir)
        if sentences is None or not cuts_sentences(cfg.context):
            cfg = dataclasses.replace(cfg, sentence_thresholds=())
        folder, model, params = load_trained_model(model_dir, cfg.dtype)
        # What load_trained's fast tokenizer holds, from the cache beside the compiled programs when it is there
        # (no transformers import).
        tokenizer = load_tag_tokenizer(folder, cfg.compilation_cache)
        check_ids_fit(tokenizer.max_id, model.config.vocab_size, folder)
        labels = model.config.labels
        check_iob2(labels)
        check_tag_config(cfg, family_of(model.config.model_type).max_positions(model.config))
        enable_compilation_cache(cfg.compilation_cache)
        self.cfg, self.labels, self.text_field, self.model_dir = cfg, list(labels), text_field, str(model_dir)
        # The tokenizer's private copy of the Rust tokenizer, with any truncation/padding of tokenizer.json off.
        backend = tokenizer.backend
        backend.no_truncation()
        backend.no_padding()
        self.tokens = Tokens(backend, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0)
        self.forward = CompiledForward(model, params, cfg, self.tokens.pad_id)
        self.stats = TagStats()
        self.pipeline = Pipeline(self.tokens, self.forward, cfg, self.labels, self.stats, sentences)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config: TagConfig | None = None, **overrides) -> Tagger:
        """Load a run folder (holding `model/`) or an HF BERT token-classification folder."""
        return cls(model_dir, config, **overrides)

    @property
    def backend(self):
        """The Rust tokenizer (no truncation, no padding)."""
        return self.tokens.backend

    @property
    def shapes(self) -> set[tuple[int, int]]:
        """The batch shapes run so far."""
        return self.forward.shapes

    @property
    def compiles(self) -> int:
        """Distinct batch shapes run so far (each compiles once)."""
        return len(self.forward.shapes)

    @property
    def compiled_ahead(self) -> int:
        """Shapes compiled on the compile threads."""
        return self.forward.compiled_ahead

    @property
    def max_compiles(self) -> int:
        """The bound on `compiles`: a full and a small batch shape per bucket."""
        return self.forward.max_compiles

    def batch_shapes(self, buckets: Iterable[int] | None = None) -> list[tuple[int, int]]:
        """The full and the small batch shape of each bucket (default: all), shortest bucket first."""
        return self.forward.batch_shapes(buckets)

    def precompile(self, buckets: Iterable[int] | None = None) -> None:
        """Compile the batch shapes of these buckets (default: all) now, so that timing or serving later
        compiles nothing."""
        self.forward.precompile(buckets)

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
        return self.pipeline.stream(records)

    tag_file = tag_file  # flaxner.tagging.filejob.tag_file(self, path, ...)
