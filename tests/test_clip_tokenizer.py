"""The CLIP BPE tokenizer on a tiny vocab/merges written here, with ids worked out by hand."""
import json
import warnings

import pytest

from models.clip.tokenizer import BYTE_TO_CHAR, CLIPTokenizer, normalize, pre_tokenize

CHARS = ["!", "'", "2", "s", *"abcdefghijklmnopqrtuvwxyz"]
# Rank order is NOT left-to-right order: "t o</w>" (rank 1) merges before "ph o" (rank 2).
MERGES = [("p", "h"), ("t", "o</w>"), ("ph", "o"), ("pho", "to</w>")]
TOKENS = CHARS + [c + "</w>" for c in CHARS] + ["ph", "to</w>", "pho", "photo</w>", "<|startoftext|>", "<|endoftext|>"]
VOCAB = {t: i for i, t in enumerate(TOKENS)}
BOS, EOS = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]


def write_folder(path, **config):
    (path / "vocab.json").write_text(json.dumps(VOCAB))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    if config:
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_byte_table_and_pre_tokenizing():
    assert len(set(BYTE_TO_CHAR.values())) == 256
    assert BYTE_TO_CHAR[ord("a")] == "a" and BYTE_TO_CHAR[ord(" ")] == "\u0120"  # space -> "Ġ" (256 + 32)
    assert normalize("  A\tPhoto\n\nOF ") == " a photo of "
    assert pre_tokenize("it's a 2024 café!!'s x'LL") == ["it", "'s", "a", "2", "0", "2", "4", "café", "!!'", "s",
                                                         "x", "'", "LL"]  # contractions are lower case only
    assert pre_tokenize("中文 ½") == ["中文", "½"]  # CJK letters run together; "½" is a number (No)


def test_bpe_follows_merge_ranks():
    tok = CLIPTokenizer(VOCAB, MERGES)
    # p h o t o</w> -> ph o t o</w> -> ph o to</w> -> pho to</w> -> photo</w>
    assert tok.bpe("photo") == ["photo</w>"]
    assert tok.bpe("phot") == ["pho", "t</w>"]
    assert tok.bpe("to") == ["to</w>"]


def test_known_ids_padding_and_pad_token_from_config(tmp_path):
    tok = CLIPTokenizer.from_folder(write_folder(tmp_path))  # no config: SD-1's defaults, pads with EOS
    ids = [BOS, VOCAB["a</w>"], VOCAB["photo</w>"], VOCAB["!</w>"], EOS]
    assert tok.encode("A  photo!") == ids
    out = tok(["A  photo!", "it's"])
    assert out.shape == (2, 77) and out.dtype.is_floating_point is False
    assert out[0].tolist() == ids + [EOS] * 72
    assert out[1, :5].tolist() == [BOS, VOCAB["i"], VOCAB["t</w>"], VOCAB["'"], VOCAB["s</w>"]]
    assert tok(["a", "a photo"], padding="longest").tolist() == [[BOS, VOCAB["a</w>"], EOS, EOS],
                                                                [BOS, VOCAB["a</w>"], VOCAB["photo</w>"], EOS]]
    # SD-2 / SDXL's second tokenizer: pad "!" given as a serialised AddedToken.
    sub = tmp_path / "sd2"
    sub.mkdir()
    tok2 = CLIPTokenizer.from_folder(write_folder(sub, pad_token={"content": "!", "special": True},
                                                  model_max_length=8))
    assert tok2.pad_token_id == VOCAB["!"] and tok2.model_max_length == 8
    assert tok2("a").tolist() == [[BOS, VOCAB["a</w>"], EOS] + [VOCAB["!"]] * 5]


def test_truncation_keeps_eos_and_warns_once(tmp_path):
    tok = CLIPTokenizer(VOCAB, MERGES, model_max_length=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tok("a b c d e")
    assert out.tolist() == [[BOS, VOCAB["a</w>"], VOCAB["b</w>"], VOCAB["c</w>"], EOS]]
    assert len(caught) == 1 and "\n" not in str(caught[0].message) and "'d e'" in str(caught[0].message)


def test_unknown_bytes_special_strings_and_decode():
    tok = CLIPTokenizer(VOCAB, MERGES)
    unk = tok.unk_token_id
    assert tok.encode("é") == [BOS, unk, unk, EOS]  # two UTF-8 bytes, neither in this vocab
    assert tok.encode("a<|endoftext|>b") == [BOS, VOCAB["a</w>"], EOS, VOCAB["b</w>"], EOS]
    assert tok.decode(tok.encode("a photo! it's")) == "a photo ! it 's"


def test_bad_vocabulary_and_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="special tokens .*pad_token='<pad>'"):
        CLIPTokenizer(VOCAB, MERGES, pad_token="<pad>")
    with pytest.raises(ValueError, match="merges .*not in the vocabulary"):
        CLIPTokenizer(VOCAB, MERGES + [("x", "y")])
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        (tmp_path / "vocab.json").write_text("{}")
        CLIPTokenizer.from_folder(tmp_path)


def test_tokenizer_json_alone_reads_the_same(tmp_path):
    # Some open_clip repositories ship only the tokenizers-library file.
    spec = {"model": {"type": "BPE", "vocab": VOCAB, "merges": [f"{a} {b}" for a, b in MERGES[:2]]
                      + [list(m) for m in MERGES[2:]]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = CLIPTokenizer.from_folder(tmp_path)
    assert tok.encode("a photo") == CLIPTokenizer(VOCAB, MERGES).encode("a photo")
