"""The captions' BPE vocabulary (data/bpe_vocab.py) and the shipped tokenizer files in CLIP's format."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.bpe_vocab import (END, END_OF_WORD, START, build_vocab, bytes_to_unicode, caption_corpus, clean_text,
                            decode, encode, main, train_bpe)
from data.captions import parse_caption

TOKENIZER = Path(__file__).resolve().parents[1] / "checkpoints" / "t2i_shapes" / "tokenizer"
FIXED_CAPTION = "two red discs and a blue square on a red-to-blue background"
# Ids of FIXED_CAPTION with the shipped files, as transformers' CLIPTokenizer (5.25.0, reference environment,
# CLIPTokenizer.from_pretrained(TOKENIZER)(FIXED_CAPTION).input_ids) gives them.
FIXED_IDS = [600, 590, 535, 599, 533, 353, 548, 564, 550, 353, 535, 301, 525, 301, 548, 521, 601]


def _shipped():
    vocab = json.loads((TOKENIZER / "vocab.json").read_text(encoding="utf-8"))
    lines = (TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    merges = [tuple(line.split(" ")) for line in lines[1:]]
    config = json.loads((TOKENIZER / "tokenizer_config.json").read_text())
    return vocab, merges, config


def test_bytes_to_unicode_is_gpt2_and_clips_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord("!")] == "!" and table[0xFF] == "ÿ"
    assert table[ord(" ")] == "Ġ" and table[0] == chr(256) and table[0xAD] == chr(323)


def test_bpe_training_on_a_hand_counted_corpus():
    # Words: "ab</w>" x3 and "abc</w>" x1. Pair counts: (a, b</w>) 3, (a, b) 1, (b, c</w>) 1 -> merge a b</w>;
    # then (a, b) 1 and (b, c</w>) 1 tie at 1 < min_frequency 2 -> stop.
    assert train_bpe(["ab ab", "ab abc"]) == [("a", "b</w>")]
    assert train_bpe(["ab ab", "ab abc"], min_frequency=1) == [("a", "b</w>"), ("a", "b"), ("ab", "c</w>")]
    assert clean_text("  Two RED-to-blue,  discs ") == ["two", "red", "-", "to", "-", "blue", ",", "discs"]


def test_vocab_layout_is_clips():
    merges = [("a", "b</w>"), ("a", "b")]
    vocab = build_vocab(merges)
    chars = list(bytes_to_unicode().values())
    assert [vocab[c] for c in chars] == list(range(256))
    assert [vocab[c + END_OF_WORD] for c in chars] == list(range(256, 512))
    assert vocab["ab</w>"] == 512 and vocab["ab"] == 513 and vocab[START] == 514 and vocab[END] == 515
    assert encode("ab abc", vocab, merges) == [514, 512, 513, vocab["c</w>"], 515]


def test_shipped_tokenizer_known_ids_and_config():
    vocab, merges, config = _shipped()
    assert len(vocab) == 512 + len(merges) + 2 and vocab[END] == len(vocab) - 1 and vocab[START] == len(vocab) - 2
    assert config["pad_token"] == END and config["model_max_length"] == 32
    assert encode(FIXED_CAPTION, vocab, merges) == FIXED_IDS
    assert decode(FIXED_IDS, vocab) == "two red discs and a blue square on a red - to - blue background"


def test_project_clip_tokenizer_reads_the_shipped_files():
    from models.clip.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.from_folder(TOKENIZER)
    assert tok.model_max_length == 32 and tok.pad_token_id == FIXED_IDS[-1]
    ids = tok(FIXED_CAPTION)  # (1, 32): padded with <|endoftext|>
    assert ids.shape == (1, 32)
    assert ids[0].tolist() == FIXED_IDS + [FIXED_IDS[-1]] * (32 - len(FIXED_IDS))
    assert parse_caption(tok.decode(ids[0].tolist())) == parse_caption(FIXED_CAPTION)
    corpus = caption_corpus(images=15)
    assert [tok.encode(t) for t in corpus] == [encode(t, *_shipped()[:2]) for t in corpus]


@pytest.mark.slow
def test_every_caption_fits_and_decodes_back():
    vocab, merges, config = _shipped()
    corpus = caption_corpus(images=60)  # every paraphrase of 60 train captions
    for text in corpus:
        ids = encode(text, vocab, merges)
        assert len(ids) <= config["model_max_length"], text
        # Every caption word is one token: no caption word is split into pieces.
        assert len(ids) == len(clean_text(text)) + 2, text
        assert parse_caption(decode(ids, vocab)) == parse_caption(text)


@pytest.mark.slow
def test_cli_writes_a_fresh_folder_and_never_overwrites(tmp_path):
    out = tmp_path / "tok"
    main(["--out", str(out), "--images", "10"])
    assert {p.name for p in out.iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json",
                                               "special_tokens_map.json"}
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--images", "10"])
    with pytest.raises(SystemExit):  # the captions need more than 8 tokens
        main(["--out", str(tmp_path / "short"), "--images", "10", "--model-max-length", "8"])
    assert not (tmp_path / "short").exists()
