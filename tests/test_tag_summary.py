"""The summary `flaxner tag` prints: one JSON line for scripts, a short line and a key per line on a terminal."""

import json

from flaxner.tagging.summary import TagSummary


def _summary() -> TagSummary:
    return TagSummary(lines=4, errors=1, warnings=0, entities=18, output="docs/sample.entities.jsonl",
                      this_run={"lines": 4, "errors": 1, "warnings": 0, "entities": 18}, seconds=3.25, tokens=812,
                      docs_per_s=1.2, tokens_per_s=249.8, compiles=7,
                      shapes=[[rows, bucket] for rows, bucket in zip(range(64, 0, -4), range(8, 520, 32))])


def test_off_a_terminal_the_summary_is_the_one_json_line_scripts_read():
    s = _summary()
    out = s.printed(tty=False)
    assert "\n" not in out and json.loads(out) == {"summary": s.to_json()} and len(out) > 400


def test_on_a_terminal_it_is_a_short_line_then_the_same_json_a_key_per_line():
    s = _summary()
    head, rest = s.printed(tty=True).split("\n", 1)
    assert head == ("flaxner tag: 4 lines, 18 entities, 1 errors, 0 warnings -> docs/sample.entities.jsonl "
                    "(3.2 s, 250 tokens/s)")
    assert json.loads(rest) == {"summary": s.to_json()}
    lines = rest.splitlines()
    assert len(lines) == len(s.to_json()) + 2 and max(len(x) for x in lines) < 200
