"""What a tagging run reports: one typed `TagSummary` that `tag_file` returns and the CLI prints as JSON; the
`--processes` parent and the Ray driver print the same fields, in the same order, followed by their own (`processes`;
`output_dir`, `slices`, `nodes`, `pool`, ...).

It imports nothing heavy, so the `--processes` parent (which never imports JAX) and the Ray driver can share it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class TagSummary:
    """`lines`, `errors`, `warnings`, `entities` count the whole output (a resumed run's earlier lines included);
    `this_run` counts what this run tagged; `input_damaged` says why a damaged gzip input ended early."""

    lines: int
    errors: int
    warnings: int
    entities: int
    output: str
    this_run: dict = field(default_factory=dict)  # lines, errors, warnings, entities of this run
    resumed_lines: int = 0
    seconds: float = 0.0
    tokens: int = 0
    docs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    compiles: int = 0
    shapes: list = field(default_factory=list)  # [rows, bucket] of each batch shape run
    long_docs: int = 0
    input_damaged: str | None = None
    field_missing: str | None = None  # most lines lack the text's key: what to do

    def to_json(self) -> dict:
        """The printed summary: the fields in this order, `input_damaged` only when the input was damaged."""
        out = dataclasses.asdict(self)
        for key in ("input_damaged", "field_missing"):
            if out[key] is None:
                del out[key]
        return out

    def printed(self, tty: bool = False) -> str:
        """What `flaxner tag` prints on stderr: one JSON line `{"summary": ...}` (what scripts and the --processes
        parent read); on a terminal, a short line first and the same JSON a key per line, not one line of 600."""
        fields = self.to_json()
        if not tty:
            return json.dumps({"summary": fields})
        head = (f"flaxner tag: {self.lines} lines, {self.entities} entities, {self.errors} errors, {self.warnings} "
                f"warnings -> {self.output} ({self.seconds:.1f} s, {self.tokens_per_s:.0f} tokens/s)")
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items())
        return f'{head}\n{{"summary": {{\n{body}\n}}}}'

    def __getitem__(self, key: str):
        """The JSON's keys, for code that reads a summary as the printed JSON (`summary["lines"]`)."""
        return self.to_json()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()
