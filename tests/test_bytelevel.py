"""Byte-level BPE (ModernBERT's tokenizer, built offline here): training words get the sub-tokens they have in
running text, labels sit on each word's first sub-token, and the tagger's character offsets are each word's,
punctuation and non-ASCII included."""

import json
from pathlib import Path

import numpy as np
import pytest

from flaxner.config import DataConfig
from flaxner.data.labels import IGNORE
from flaxner.data.splits import encode
from flaxner.data.words import split_words
from flaxner.models.bytelevel import for_words
from flaxner.models.loading import load_tokenizer

TEXTS = ["EU rejects German call to boycott British lamb .", "Peter Blackburn lives in Zürich, Köln and São Paulo!",
         "The European Commission said on Thursday it disagreed with German advice to consumers .",
         "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said .",
         "BRUSSELS 1996-08-22 — Ærøskøbing (Denmark) and Kraków; naïve café owners' \"quotes\"."]
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def modernbert_tokenizer(d: Path) -> Path:
    """A ModernBERT-shaped tokenizer folder: NFC, ByteLevel BPE (no prefix space, as the release), specials
    [UNK] [CLS] [SEP] [PAD] [MASK] after the learnt vocabulary, TemplateProcessing [CLS] $A [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(SPECIALS)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]")
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return modernbert_tokenizer(tmp_path_factory.mktemp("tok"))


def raw(folder):
    """The tokenizer as the folder has it (no prefix space, untrimmed offsets): the reference."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_the_fixture_is_the_release_shape_and_for_words_fixes_it(folder):
    state = json.loads((folder / "tokenizer.json").read_text())
    assert state["pre_tokenizer"]["add_prefix_space"] is False and state["post_processor"]["type"] == "TemplateProcessing"
    tok = load_tokenizer(folder)
    assert tok.cls_token_id == raw(folder).token_to_id("[CLS]") and tok.pad_token_id == raw(folder).token_to_id("[PAD]")
    fixed = json.loads(tok.backend_tokenizer.to_str())
    assert fixed["pre_tokenizer"]["add_prefix_space"] is True
    assert tok("Peter")["input_ids"][0] == tok.cls_token_id and tok("Peter")["input_ids"][-1] == tok.sep_token_id
    assert for_words(tok).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()  # idempotent


def test_training_words_get_their_running_text_sub_tokens(folder):
    """Each word's sub-tokens are those of " word" in running text; its label is on the first, IGNORE after."""
    ref = raw(folder)
    tok = load_tokenizer(folder)
    words = [t.split() for t in TEXTS]
    tags = [[(k % 8) + 1 if k % 3 else 0 for k in range(len(w))] for w in words]
    enc = encode({"tokens": words, "ner_tags": tags}, tok, DataConfig())
    for i, ws in enumerate(words):
        pieces = [ref.encode(" " + w, add_special_tokens=False).ids for w in ws]
        assert [ref.id_to_token(p[0])[0] for p in pieces] == ["Ġ"] * len(ws)  # every word after a space
        ids = enc.input_ids[i].tolist()
        assert ids == [tok.cls_token_id, *[x for p in pieces for x in p], tok.sep_token_id]
        assert ids[1:-1] == ref.encode(" " + TEXTS[i], add_special_tokens=False).ids  # = the running text
        want = [IGNORE] + [x for p, t in zip(pieces, tags[i]) for x in [t] + [IGNORE] * (len(p) - 1)] + [IGNORE]
        assert enc.labels[i].tolist() == want


@pytest.mark.parametrize("words", ["conll", "tokenizer"])
def test_sub_token_offsets_cover_each_word_exactly(folder, words):
    """The tagger's offsets: no sub-token covers a space, and the sub-tokens of each (CoNLL-style) word span it."""
    from tokenizers import Tokenizer

    from flaxner.tagging.reading import Record
    from flaxner.tagging.windows import encode as encode_texts

    backend = Tokenizer.from_str(load_tokenizer(folder).backend_tokenizer.to_str())
    texts = [*TEXTS, "  two  spaces\tand a tab ", "Zürich"]
    out = encode_texts(backend, [Record(i, i, t) for i, t in enumerate(texts)], words=words, context="none")
    for (_, doc), text in zip(out, texts, strict=True):
        chars = [doc.token_chars(t) for t in range(len(doc.ids))]
        # a sub-token is whitespace only (a tab is a token of its own) or none at its ends (`Ġ` trimmed)
        assert all(text[a:b] == text[a:b].strip() or not text[a:b].strip() for a, b in chars), \
            [text[a:b] for a, b in chars]
        covered = np.zeros(len(text), bool)
        for a, b in chars:
            covered[a:b] = True
        assert "".join(c for c, k in zip(text, covered) if k and not c.isspace()) == "".join(text.split())
        if words == "conll":
            for w, (a, b) in enumerate(split_words(text)):
                mine = [chars[t] for t in range(len(chars)) if doc.word_ids[t] == w and chars[t][1] > chars[t][0]]
                assert (min(s for s, _ in mine), max(e for _, e in mine)) == (a, b), text[a:b]
