"""Learn a byte-level BPE vocabulary on the shapes captions and write it in CLIP's files (vocab.json + merges.txt).

    python -m data.bpe_vocab --out checkpoints/t2i_shapes/tokenizer      # the shipped tokenizer's command

CLIP's tokenizer (Radford et al. 2021, section 2.4: "a lower-cased byte pair encoding (BPE) representation of
the text with a 49,152 vocab size"; the layout below is that of the openai/CLIP repository's
``simple_tokenizer.py`` and of the hub's ``openai/clip-vit-large-patch14`` files) reads:

* ``vocab.json``: token string -> id. Ids 0-255 are the 256 byte characters in ``bytes_to_unicode`` order,
  256-511 the same characters followed by the end-of-word marker ``</w>``, then one token per merge in merge
  order, then ``<|startoftext|>`` and ``<|endoftext|>`` last.
* ``merges.txt``: a ``#version: 0.2`` line, then one merge "a b" per line, earlier lines binding first.

Text is lower-cased, its whitespace collapsed, and split into words by CLIP's pattern (runs of letters, single
digits, runs of other non-space characters; our corpus is ASCII, so ASCII classes stand in for \\p{L} and
\\p{N}); each word's bytes map to printable characters (``bytes_to_unicode``) and its last symbol carries
``</w>``. Training (Sennrich et al. 2016, Algorithm 1) repeatedly merges the most frequent adjacent pair of
symbols over the word counts, ties broken by the pair's string order so the result is deterministic, until no
pair occurs ``min_frequency`` times or ``max_merges`` are made. On the captions every word ends as one token.
``encode`` here is a small reference BPE for the tests and the max-length check; the project's tokenizer is
the CLIP one under models/clip/, which reads these files.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

from data.captions import NUM_VARIANTS, CaptionedShapes, caption, caption_attributes

START, END = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's pre-tokenizer pattern restricted to ASCII: letters, single digits, runs of other non-space characters.
WORD_PATTERN = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) byte -> printable character table: printable Latin-1 bytes map to themselves, the
    other 68 bytes (controls, space, ...) to code points 256, 257, ... in byte order, so no token is whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> list[str]:
    """Lower-case, collapse whitespace and split into CLIP words (each later gets ``</w>`` on its last symbol)."""
    return WORD_PATTERN.findall(" ".join(text.lower().split()))


def word_symbols(word: str) -> tuple[str, ...]:
    """A word's initial symbols: its bytes as printable characters, the last one with the end-of-word marker."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + END_OF_WORD)


def train_bpe(texts, *, min_frequency: int = 2, max_merges: int = 10_000) -> list[tuple[str, str]]:
    """The merges learned on ``texts`` (an iterable of strings), in order."""
    words = Counter(word_symbols(w) for text in texts for w in clean_text(text))
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, then string order: deterministic
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        merged = Counter()
        for symbols, n in words.items():
            merged[_apply_merge(symbols, best)] += n
        words = merged
    return merges


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + </w>, one token per merge, then the two special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + ["".join(m) for m in merges] + [START, END]
    if len(set(tokens)) != len(tokens):
        raise ValueError("data/bpe_vocab.py: two merges produce the same token; the merges are inconsistent")
    return {t: i for i, t in enumerate(tokens)}


def encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """Reference BPE: [<|startoftext|>, word tokens..., <|endoftext|>] ids, applying merges by rank."""
    rank = {m: r for r, m in enumerate(merges)}
    ids = [vocab[START]]
    for word in clean_text(text):
        symbols = word_symbols(word)
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: rank.get(p, len(rank)))
            if pair not in rank:
                break
            symbols = _apply_merge(symbols, pair)
        ids += [vocab[s] for s in symbols]
    return ids + [vocab[END]]


def decode(ids: list[int], vocab: dict[str, int]) -> str:
    """Ids back to text: special tokens dropped, ``</w>`` read as a space (CLIP's decoding)."""
    inverse = {i: t for t, i in vocab.items()}
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    text = "".join(inverse[i] for i in ids if inverse[i] not in (START, END))
    return bytes(byte_of[c] for c in text).decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()


def caption_corpus(*, images: int, seed: int = 0) -> list[str]:
    """Every paraphrase of the captions of train images 0..images-1 (the tokenizer's training text)."""
    ds = CaptionedShapes(size=images, seed=seed, split="train")
    out = []
    for i in range(images):
        ca = caption_attributes(ds.shapes.attributes(i))
        out += [caption(ca, v) for v in range(NUM_VARIANTS)]
    return out


def write_tokenizer(out: Path, merges: list[tuple[str, str]], *, model_max_length: int, meta: dict) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json (the hub's file names)."""
    out.mkdir(parents=True, exist_ok=False)
    (out / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
              **special, "diffprune": meta}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="tokenizer folder to create (never overwritten)")
    p.add_argument("--images", type=int, default=2000, help="train images whose captions (all paraphrases) "
                                                            "form the corpus [2000]")
    p.add_argument("--model-max-length", type=int, default=32, help="tokens per padded prompt, with the "
                                                                    "start and end tokens [32]")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        p.error(f"--out {out} exists; remove it first or write to another folder")
    corpus = caption_corpus(images=a.images)
    merges = train_bpe(corpus)
    vocab = build_vocab(merges)
    longest = max(len(encode(t, vocab, merges)) for t in corpus)
    if longest > a.model_max_length:
        p.error(f"the longest caption takes {longest} tokens, over --model-max-length {a.model_max_length}")
    meta = {"command": "python -m data.bpe_vocab " + shlex.join(argv), "corpus_captions": len(corpus),
            "merges": len(merges), "vocab_size": len(vocab), "longest_caption_tokens": longest}
    write_tokenizer(out, merges, model_max_length=a.model_max_length, meta=meta)
    print(f"[bpe] {len(merges)} merges, vocab {len(vocab)}, longest caption {longest} tokens -> {out}")
    return out


if __name__ == "__main__":
    main()
