"""The file job: a JSONL/text file (gzip, stdin, a shard) in, one JSON line per input line out, through a part file
that commits every few seconds, so an interrupted run resumes where it stopped (and refuses an input that changed)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from flaxner.tagging.formats import OutputSpec, assemble_file, check_spec, default_suffix, is_whole
from flaxner.tagging.job import count, field_missing, new_counts, tagged_lines
from flaxner.tagging.reading import MAX_LINE_BYTES, RESUME_STDIN, LineReader, TagInputError, input_format, \
    parse_shard
from flaxner.tagging.summary import TagSummary
from flaxner.tagging.writing import OutputWriter, Progress, TagInterrupted, check_output, default_output


def tag_file(tagger, path: str, output: str | None = None, *, id_field: str = "id", keep_fields: bool = False,
             fmt: str = "auto", shard: str | None = None, resume: bool = False, overwrite: bool = False,
             resume_stdin: bool = False, on_error: str = "record", max_line_bytes: int = MAX_LINE_BYTES,
             progress: bool = True, commit_every: float = 5.0, output_format: str | OutputSpec = "jsonl") -> TagSummary:
    """Tag a JSONL/text file (or '-' for stdin) into OUTPUT in `output_format` (a name of `formats.FORMATS`, or an
    `OutputSpec`); returns the summary."""
    spec = output_format if isinstance(output_format, OutputSpec) else \
        OutputSpec(output_format, id_field, keep_fields)
    output = output or default_output(path, default_suffix(spec.format))
    fmt = input_format(path, fmt)
    if tagger.cfg.document_field and fmt == "txt":
        raise TagInputError(f"--document-field {tagger.cfg.document_field}: {path} is text, not JSONL (a text line "
                            f"has no fields)")
    shard_t = parse_shard(shard)
    check_output(output, path)
    check_spec(spec, output)
    if resume and path == "-" and not resume_stdin:
        raise TagInputError(RESUME_STDIN)
    key = {"input": str(Path(path).resolve()) if path != "-" else "-", "shard": list(shard_t), "format": fmt,
           "text_field": tagger.text_field, "id_field": id_field, "keep_fields": keep_fields,
           "model": tagger.model_dir, "aggregation": tagger.cfg.aggregation, "max_length": tagger.cfg.max_length,
           "stride": tagger.cfg.stride, "words": tagger.cfg.words, "context": tagger.cfg.context,
           "context_size": tagger.cfg.context_size, "segment_length": tagger.cfg.segment_length,
           "document_field": tagger.cfg.document_field,
           "max_line_bytes": max_line_bytes}
    if tagger.cfg.context_views != ("full",):  # a key without it: one view, as before views
        key["context_views"] = list(tagger.cfg.context_views)
    if spec.format != "jsonl":  # a jsonl output's resume key is what it was before formats
        key["output_format"] = spec.key()
    if (sentences := tagger.pipeline.sentences) is not None:  # the run's learnt sentence starts (as before: none)
        key["sentences"] = sentences.fitted
        if tagger.cfg.sentence_thresholds not in ((), (sentences.threshold,)):  # without: the model's one cut
            key["sentence_thresholds"] = list(tagger.cfg.sentence_thresholds)
    whole = is_whole(spec.format) and not spec.staged
    writer = OutputWriter(output, key, resume, overwrite,
                          assemble=(lambda part, out: assemble_file(spec, [part], out)) if whole else None)
    try:
        reader = LineReader(path, shard_t, writer.resume_point, max_line_bytes,
                            writer.state.get("input") if writer.resume_point else None,
                            document_field=tagger.cfg.document_field)
    except BaseException:
        writer.close()
        raise
    before = writer.state.get("counts", {**new_counts(), "lines": writer.lines_done})
    counts = new_counts()  # this run's
    start_tokens, t0 = tagger.stats.tokens, time.perf_counter()
    bar = Progress(reader, tagger.stats, counts, enabled=progress, t0=t0)
    last_commit, last = time.monotonic(), None
    no_field: Counter = Counter()  # keys of the objects that lack --text-field; None: how many lack it

    def commit() -> None:
        if last is not None:
            writer.commit(last.line + 1, last.resume_at,
                          {"input": reader.identity(last), "counts": {k: before[k] + counts[k] for k in counts}})

    try:
        with bar:
            document: list = []  # a document's output lines (--document-field) are written and counted together
            for rec, ents, line in tagged_lines(tagger, bar.track(reader), fmt, id_field, keep_fields, on_error,
                                                no_field, spec):
                document.append((rec, ents, line))
                if not rec.doc_end:
                    continue
                writer.write(b"".join(x[2] for x in document), len(document))
                for r, e, _ in document:
                    count(counts, r, e)
                last, document = rec, []
                if time.monotonic() - last_commit >= commit_every:
                    commit()
                    last_commit = time.monotonic()
                bar.tick(rec.line)
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
    tokens = tagger.stats.tokens - start_tokens
    return TagSummary(**{k: before[k] + counts[k] for k in counts}, output=output, this_run=dict(counts),
                      resumed_lines=before["lines"], seconds=round(seconds, 3), tokens=tokens,
                      docs_per_s=round(counts["lines"] / max(seconds, 1e-9), 1),
                      tokens_per_s=round(tokens / max(seconds, 1e-9), 1), compiles=tagger.compiles,
                      shapes=sorted(tagger.shapes), long_docs=tagger.stats.long_docs,
                      input_damaged=reader.damage, field_missing=field_missing(no_field, counts["lines"],
                                                                                tagger.text_field))

