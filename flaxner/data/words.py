"""Raw text -> words, split the way CoNLL-2003 (Reuters) was tokenized, so that the tagger and the JSONL-spans
reader see the words training saw: whitespace words with leading/trailing punctuation split off, `'s`/`n't`
split off, and abbreviations (`U.S.`, `St.`, `Inc.`, `Russian-U.S.`), hyphenated words (`Bre-X`), numbers
(`1,000`, `3.5`) and list numbers (`2.` before a capitalised word) kept whole; and the sentences of a text."""

from __future__ import annotations

import re

# Words that keep their final period (CoNLL-2003 writes `Inc.`, `St.`, `vs.` as one token).
ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof gen gov sen rep rev st mt ft jr sr co corp inc ltd plc bros dept univ assn vs etc no nos
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
    calif fla ariz colo conn del ga ill ind kan ky la md mass mich minn miss mo mont neb nev okla ore pa tenn tex
    va vt wash wis wyo sgt lt col capt cmdr adm maj
""".split())
# Letters joined by periods: U.S., U.N., a.m., F.C., N.J.; a single capital initial: M., J.
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]?\.?")
_HYPHEN_INITIALS = re.compile(r".+-(?:[^\W\d_]\.){2,}")  # Russian-U.S., then-U.S.
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'m", "'d")
_LEADING = "\"([{'`$\u201c\u2018\u00ab"
_TRAILING = ",;:!?)]}\"'\u201d\u2019\u00bb"
_CHUNK = re.compile(r"\S+")
_RUN = re.compile(r"(.)\1*")
# A list number ("1.", "10."): one word when it opens a text or comes before a capitalised word, and it opens a
# sentence (results tables: "... 25.76 points 2. Andrei Ivanov ( Russia ) 24.88 3. Ryan ...").
_LIST_NUMBER = re.compile(r"\d{1,3}\.")
_OPENS_CAPITAL = re.compile(r"[\"'(\u201c\u2018]*[^\W\d_]")


def split_words(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of the words of `text`, in order."""
    out: list[tuple[int, int]] = []
    chunks = [m.span() for m in _CHUNK.finditer(text)]
    for k, (a, b) in enumerate(chunks):
        if text[a:b].isalnum():  # most words: no punctuation, no rule applies
            out.append((a, b))
        elif _LIST_NUMBER.fullmatch(text, a, b) and k + 1 < len(chunks) and _capitalised(text, *chunks[k + 1]):
            out.append((a, b))
        else:
            _split_chunk(text, a, b, out, first=k == 0, last=k == len(chunks) - 1)
    return out


def words_of(text: str) -> list[str]:
    """The words of `text` as strings."""
    return [text[a:b] for a, b in split_words(text)]


def _capitalised(text: str, a: int, b: int) -> bool:
    m = _OPENS_CAPITAL.match(text, a, b)
    return m is not None and text[m.end() - 1].isupper()


def _is_punct(s: str) -> bool:
    return not any(c.isalnum() for c in s)


def _split_chunk(text: str, a: int, b: int, out: list[tuple[int, int]], first: bool, last: bool) -> None:
    if _is_punct(text[a:b]):  # runs of one mark ("--", "...") are one token, different marks ('".') are not
        out.extend((a + m.start(), a + m.end()) for m in _RUN.finditer(text[a:b]))
        return
    head: list[tuple[int, int]] = []
    while a < b - 1 and text[a] in _LEADING and not text[a:b].lower() in _CLITICS:
        head.append((a, a + 1))
        a += 1
    tail: list[tuple[int, int]] = []
    while a < b - 1:
        w = text[a:b]
        low = w.lower()
        if w[-1] in _TRAILING and not (w[-1] == "'" and low in _CLITICS):
            tail.append((b - 1, b))
            b -= 1
        elif w.endswith("...") or w.endswith(".."):
            k = len(w) - len(w.rstrip("."))
            tail.append((b - k, b))
            b -= k
        elif w[-1] == "." and ((last and not tail) or not _keeps_period(w, first and not head)):
            tail.append((b - 1, b))
            b -= 1
        else:
            clitic = next((c for c in _CLITICS if low.endswith(c) and len(low) > len(c)), None)
            if clitic is None:
                break
            tail.append((b - len(clitic), b))
            b -= len(clitic)
    out.extend(head)
    out.append((a, b))
    out.extend(reversed(tail))


def _keeps_period(w: str, first: bool) -> bool:
    """A word ending in "." that is one token in CoNLL-2003: an abbreviation, initials, or a list number ("2.")
    that opens the text. (At the end of the text the period is split off: CoNLL-2003 writes a sentence that ends
    in "U.S." as `U.S` `.`.)"""
    stem = w[:-1]
    return (stem.lower() in ABBREVIATIONS or _INITIALS.fullmatch(w) is not None
            or _HYPHEN_INITIALS.fullmatch(w) is not None
            or (first and stem.isdigit()))


# A sentence ends after a word made only of these (".", "?!", "...") and the closing marks after it.
_TERMINAL = frozenset(".!?\u2026")
_CLOSERS = frozenset(")]}\u201d\u2019\u00bb")  # never open a sentence
_QUOTES = frozenset("\"'")  # open or close: close one when glued to the mark or when the sentence opened one
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def sentence_starts(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Indices of the words (`spans`, as `split_words` gives them) that start a sentence, 0 first: a sentence ends
    after a word of only `.`, `!`, `?` (abbreviations and initials keep their period inside the word, so they never
    end one) and the closing brackets or quotes after it, or at a blank line; a list number (`2.`, kept whole by
    `split_words`) opens one."""
    if not spans:
        return []
    out = [0]
    ended = _is_terminal(text, spans[0])  # the words so far end a sentence
    quotes = text[spans[0][0]:spans[0][1]] == '"'  # an open straight quote in this sentence
    for k in range(1, len(spans)):
        a, b = spans[k]
        w = text[a:b]
        if ended and w and (all(c in _CLOSERS for c in w) or
                            (all(c in _QUOTES for c in w) and (quotes or a == spans[k - 1][1]))):
            quotes = False
            continue  # `. )`, `."` or `. "` closing an open quote: the mark belongs to the sentence that ended
        if ended or _BLANK_LINE.search(text, spans[k - 1][1], a) or _LIST_NUMBER.fullmatch(w):
            out.append(k)
            quotes = False
        ended = _is_terminal(text, spans[k])
        quotes ^= w == '"'
    return out


def _is_terminal(text: str, span: tuple[int, int]) -> bool:
    return all(c in _TERMINAL for c in text[span[0]:span[1]])
