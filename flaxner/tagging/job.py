"""The per-record loop every engine runs: input lines parsed into records, tagged in input order, written as output
lines and counted the same way, by the local file job (`filejob.tag_file`, which each `--processes` child runs too)
and by each Ray slice (`raytag`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from flaxner.tagging.formats import OutputSpec, record_bytes
from flaxner.tagging.reading import Line, Record, TagInputError, parse_line
from flaxner.tagging.writing import output_line

KINDS = ("lines", "errors", "warnings", "entities")


def new_counts() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


def tagged_lines(tagger, lines: Iterable[Line], fmt: str, id_field: str, keep_fields: bool, on_error: str = "record",
                 no_field: Counter | None = None,
                 spec: OutputSpec | None = None) -> Iterator[tuple[Record, list | None, bytes]]:
    """(record, entities, output bytes) for each input line, in input order: a JSON line, or what `spec`'s format
    writes for it (`formats.record_bytes`). `on_error="fail"` raises at the first bad line; `no_field` counts the
    records that lack the text's key (under None) and the keys they have. The caller counts a line (`count`) once it
    has written it, so that an interrupted write is never counted."""
    field = tagger.cfg.document_field
    records = (parse_line(line, fmt, tagger.text_field, id_field, document_field=field) for line in lines)
    for rec, ents in tagger.stream(records):
        if rec.error is not None:
            if on_error == "fail":
                raise TagInputError(rec.error)
            if no_field is not None and rec.fields is not None and tagger.text_field not in rec.fields:
                no_field.update(list(rec.fields)[:20])
                no_field[None] += 1
        yield rec, ents, (output_line(rec, ents, keep_fields, id_field) if spec is None else
                          record_bytes(spec, rec, ents))


def count(counts: dict[str, int], rec: Record, ents: list | None) -> None:
    """Add one written line to `counts` (`KINDS`)."""
    counts["lines"] += 1
    counts["errors"] += rec.error is not None
    counts["warnings"] += rec.warning is not None
    counts["entities"] += len(ents) if rec.error is None else 0


def field_missing(no_field: Counter, lines: int, text_field: str) -> str | None:
    """One sentence when most lines lack the text's key (a corpus whose text is under another key), else None."""
    n = no_field.get(None, 0)
    if not lines or n * 2 <= lines:
        return None
    keys = ", ".join(repr(k) for k, _ in Counter({k: v for k, v in no_field.items() if k is not None}).most_common(8))
    return (f"{n} of {lines} lines have no {text_field!r} field (keys seen: {keys}); name the text's key with "
            f"--text-field")
