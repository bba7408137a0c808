"""CLIP's byte-level BPE tokenizer (Radford et al. 2021, Sec. 2.4; BPE of Sennrich et al. 2016, byte-level as
GPT-2's, Radford et al. 2019, Sec. 2.2), reading the hub's ``vocab.json`` + ``merges.txt``.

    text -> NFC, every whitespace run -> " ", lower case          (normalise)
         -> pieces: 's 't 're 've 'm 'll 'd | letters+ | one digit | other non-space+   (pre-tokenise)
         -> each piece's UTF-8 bytes as printable characters (``BYTE_TO_CHAR``), "</w>" on the last one
         -> merges applied lowest rank first (BPE) -> ids from vocab.json
    ids  =  [BOS] + pieces' ids + [EOS], truncated to ``model_max_length`` (77) with EOS kept last, padded
            with the pad token to 77.

The normalisation and the pre-tokenising rule are those of transformers' (tokenizers-backed)
CLIPTokenizer; OpenAI's reference additionally runs ftfy's text repair, which is not reproduced here.
The pre-tokenising regex uses Unicode classes (\\p{L}, \\p{N}) that Python's ``re`` lacks, so it is
written out as a scanner over ``unicodedata`` categories (``pre_tokenize``).

The pad token is the pipeline's: SD-1's tokenizer pads with EOS (``<|endoftext|>``, 49407), SD-2's and
SDXL's second tokenizer with ``!`` (id 0); ``from_folder`` reads it from ``tokenizer_config.json`` or
``special_tokens_map.json``. The special tokens' strings in a prompt are those tokens (as in transformers).
"""
from __future__ import annotations

import json
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

END_OF_WORD = "</w>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, tried in this order
DEFAULT_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable character: printable Latin-1 bytes map to themselves, the other 68 bytes to
    chr(256 + n) in byte order, so BPE never sees whitespace or control characters (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, lower case (transformers' CLIPTokenizer normaliser)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)
    return "letter" if cat[0] == "L" else "number" if cat[0] == "N" else "other"


def pre_tokenize(text: str) -> list[str]:
    """The pieces of CLIP's regex ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``.

    At each position the alternatives are tried in that order, as a regex engine does: a contraction,
    else a run of letters, else ONE digit (so numbers split into digits), else a run of everything that
    is neither space, letter nor number (punctuation: an apostrophe not starting a contraction joins it).
    """
    pieces, i, n = [], 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        if text[i] == "'":
            suffix = next((s for s in CONTRACTIONS if text.startswith(s, i + 1)), None)
            if suffix is not None:
                pieces.append("'" + suffix)
                i += 1 + len(suffix)
                continue
        j = i + 1
        if kind == "letter":
            while j < n and _kind(text[j]) == "letter":
                j += 1
        elif kind == "other":
            while j < n and _kind(text[j]) == "other":
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class CLIPTokenizer:
    """vocab: token string -> id; merges: ordered (left, right) pairs (rank = position).

    ``tokenizer(prompts)`` gives the (B, model_max_length) LongTensor the SD pipelines feed the text encoder.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
                 pad_token: str = "<|endoftext|>", unk_token: str = "<|endoftext|>",
                 model_max_length: int = DEFAULT_MAX_LENGTH, source: str = "vocab.json"):
        specials = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token, "unk_token": unk_token}
        missing = [f"{k}={v!r}" for k, v in specials.items() if v not in vocab]
        bad_merges = [f"{a} {b}" for a, b in merges if a not in vocab or b not in vocab or a + b not in vocab][:3]
        if missing or bad_merges or model_max_length < 2:
            raise ValueError(f"{source}: unusable CLIP tokenizer: " + "; ".join(
                ([f"special tokens {missing} are not in the vocabulary"] if missing else [])
                + ([f"merges whose parts or result are not in the vocabulary, e.g. {bad_merges}"] if bad_merges else [])
                + ([f"model_max_length={model_max_length} leaves no room for BOS and EOS"]
                   if model_max_length < 2 else [])))
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.bos_token_id, self.eos_token_id = vocab[bos_token], vocab[eos_token]
        self.pad_token_id, self.unk_token_id = vocab[pad_token], vocab[unk_token]
        self.model_max_length = int(model_max_length)
        # Longest first, so that a special string containing another is matched whole.
        self._specials = sorted(set(specials.values()), key=len, reverse=True)
        self._cache: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------- reading
    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """A hub tokenizer folder: vocab.json + merges.txt (else tokenizer.json), optional tokenizer_config.json /
        special_tokens_map.json."""
        folder = Path(folder)
        need = [folder / "vocab.json", folder / "merges.txt"]
        absent = [p.name for p in need if not p.is_file()]
        if absent and (folder / "tokenizer.json").is_file():
            # Only the tokenizers-library file (some open_clip repositories): the same vocab and merges.
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
            vocab, merges = model.get("vocab"), model.get("merges")
            if model.get("type") != "BPE" or not isinstance(vocab, dict) or not isinstance(merges, list):
                raise ValueError(f"{folder / 'tokenizer.json'}: not a BPE tokenizer with vocab and merges")
            pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
            need, absent = [folder / "tokenizer.json"], []
        elif absent:
            raise FileNotFoundError(f"{folder}: not a CLIP tokenizer folder (no {', '.join(absent)})")
        else:
            vocab, pairs = json.loads(need[0].read_text(encoding="utf-8")), read_merges(need[1])
        kw: dict[str, Any] = {}
        # special_tokens_map.json first, then tokenizer_config.json over it: they agree in the hub's folders.
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                cfg = json.loads((folder / name).read_text(encoding="utf-8"))
                for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                    value = cfg.get(key)
                    if isinstance(value, dict):  # a serialised AddedToken
                        value = value.get("content")
                    if isinstance(value, str):
                        kw[key] = value
                length = cfg.get("model_max_length")
                # Unset lengths are written as a huge sentinel (int(1e30)); CLIP's context is 77 then.
                if isinstance(length, int) and 1 < length <= 1_000_000:
                    kw["model_max_length"] = length
        return cls(vocab, pairs, source=str(need[0]), **kw)

    # ------------------------------------------------------------------------------------------ encoding
    def bpe(self, piece: str) -> list[str]:
        """One pre-tokenised piece -> its BPE tokens (strings), "</w>" on the last."""
        if piece in self._cache:
            return self._cache[piece]
        chars = [BYTE_TO_CHAR[b] for b in piece.encode("utf-8")]
        word = chars[:-1] + [chars[-1] + END_OF_WORD]
        while len(word) > 1:
            ranked = [(self.ranks.get((a, b), None), k) for k, (a, b) in enumerate(zip(word, word[1:]))]
            ranked = [(r, k) for r, k in ranked if r is not None]
            if not ranked:
                break
            k = min(ranked)[1]
            best = word[k], word[k + 1]
            merged, k = [], 0
            while k < len(word):  # merge every occurrence of the best pair, left to right
                if k + 1 < len(word) and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """[BOS] + the text's ids + [EOS], neither truncated nor padded."""
        ids = [self.bos_token_id]
        for chunk, special in self._split_specials(text):
            if special:
                ids.append(self.vocab[chunk])
                continue
            for piece in pre_tokenize(normalize(chunk)):
                ids.extend(self.vocab.get(t, self.unk_token_id) for t in self.bpe(piece))
        return ids + [self.eos_token_id]

    def __call__(self, texts: str | Sequence[str], *, max_length: int | None = None, padding: str = "max_length",
                 warn: bool = True) -> torch.Tensor:
        """(B, max_length) int64 ids: truncated with EOS kept last (and a one-line warning), then padded.

        padding: "max_length" pads to ``max_length`` (default ``model_max_length``), "longest" to the longest
        row (after truncation).
        """
        if isinstance(texts, str):
            texts = [texts]
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding={padding!r} must be 'max_length' or 'longest'")
        L = self.model_max_length if max_length is None else int(max_length)
        rows, cut = [], []
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > L:
                cut.append((i, self.decode(ids[L - 1:-1])))
                ids = ids[:L - 1] + [self.eos_token_id]
            rows.append(ids)
        if cut and warn:
            # As the reference pipelines do: say what was dropped, in one line.
            warnings.warn("The following part of your input was truncated because CLIP can only handle sequences "
                          f"up to {L} tokens: " + "; ".join(f"prompt {i}: {t!r}" for i, t in cut), stacklevel=2)
        width = L if padding == "max_length" else max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Ids back to text ("</w>" becomes a space; bytes that are not valid UTF-8 become U+FFFD)."""
        specials = {self.bos_token_id, self.eos_token_id, self.pad_token_id} if skip_special_tokens else set()
        text = "".join(self.id_to_token[int(i)] for i in ids if int(i) not in specials)
        words = [bytes(CHAR_TO_BYTE[c] for c in w).decode("utf-8", errors="replace") for w in text.split(END_OF_WORD)]
        return " ".join(words).strip()

    def _split_specials(self, text: str) -> list[tuple[str, bool]]:
        """[(chunk, is_special)]: special-token strings in the raw text are those tokens, as in transformers."""
        out = [(text, False)]
        for tok in self._specials:
            nxt = []
            for chunk, special in out:
                if special or tok not in chunk:
                    nxt.append((chunk, special))
                    continue
                parts = chunk.split(tok)
                for k, part in enumerate(parts):
                    if k:
                        nxt.append((tok, True))
                    if part:
                        nxt.append((part, False))
            out = nxt
        return out


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """merges.txt: an optional "#version" header, then one "left right" pair per line, in rank order."""
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {n} is not a 'left right' merge pair: {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs
