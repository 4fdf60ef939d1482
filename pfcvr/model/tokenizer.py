"""Caption tokenizer: CLIP-style byte-level BPE, framed as [SOT] tokens [EOT] + zero padding.

Two ways to obtain one, one object to use:

* :meth:`Tokenizer.train` (``model.backbone: tiny``) learns a byte-level BPE with end-of-word
  markers (``</w>``, as in CLIP) on the training captions, offline and deterministically (our own
  trainer: ties between equally frequent pairs are broken lexicographically, so the same captions
  give the same vocabulary in every process). The vocabulary is the 4 special tokens (pad = 0,
  SOT, EOT, MASK), the 256 byte symbols, the same 256 with ``</w>``, then the learned merges.
* :meth:`Tokenizer.from_clip` (a real CLIP checkpoint) wraps that checkpoint's own BPE and appends
  a ``<|mask|>`` token at the end of its vocabulary (the model resizes its token embeddings to
  match). Pad stays 0, as in the official code (id 0 is "!" in CLIP's vocabulary).

Either way the tokenizer is saved with the model (:meth:`save`, :meth:`load`): a
``tokenizer.json`` for the ``tokenizers`` library plus ``pfcvr_tokenizer.json`` with the special
ids, so a trained model is restored offline and never retrained.

Contract: ``tok(texts) -> LongTensor [N, context_length]``; attributes
``context_length, vocab_size, pad_id (0), sot_id, eot_id, mask_id, special_ids``.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from pfcvr.runtime.atomic import atomic_path

PAD, SOT, EOT, MASK = "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|mask|>"
EOW = "</w>"                      # end-of-word marker of CLIP's BPE
META_FILE = "pfcvr_tokenizer.json"      # special ids + kind; marks a pfcvr-saved tokenizer
_BACKEND = "tokenizer.json"
# Words: letters runs, single digits, punctuation runs, English contractions (CLIP's rule).
_WORD_RE = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes 0..255 used by byte-level BPE (index = byte value).

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points 256+ so
    that every byte has a visible, non-whitespace symbol (the convention of GPT-2 / CLIP, which
    the ``tokenizers`` ByteLevel pre-tokenizer also follows).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _pipeline(backend: _Backend) -> _Backend:
    """Attach CLIP's text cleaning and word splitting to a BPE backend."""
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_WORD_RE), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend


def _learn_merges(word_counts: Counter, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent symbol pair.

    ``word_counts`` maps a word (tuple of symbols, the last one carrying ``</w>``) to its corpus
    frequency. Pair counts are updated incrementally (only words that contain the merged pair are
    touched) and the best pair comes from a lazy max-heap; ties go to the lexicographically
    smallest pair, which makes the result independent of hashing and process.
    """
    words = [list(w) for w in sorted(word_counts)]
    freqs = [word_counts[tuple(w)] for w in words]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            counts[pair] += f
            where.setdefault(pair, set()).add(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < n_merges:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or -neg < 1:
            continue                                    # stale heap entry
        merges.append(pair)
        a, b = pair
        joined = a + b
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):                     # remove this word's old pairs
                counts[p] -= f
                changed.add(p)
            out, k = [], 0
            while k < len(w):
                if k + 1 < len(w) and w[k] == a and w[k + 1] == b:
                    out.append(joined)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            words[i] = out
            for p in zip(out, out[1:]):                 # add its new pairs
                counts[p] += f
                where.setdefault(p, set()).add(i)
                changed.add(p)
        counts.pop(pair, None)
        for p in changed:
            c = counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
                where.pop(p, None)
    return merges


class Tokenizer:
    """Captions -> token ids ``[N, context_length]`` (SOT ... EOT, zero padded).

    Longer captions are truncated so that EOT stays the last token.
    """

    def __init__(self, backend: _Backend, *, context_length: int, kind: str,
                 pad_id: int = 0, sot_token: str = SOT, eot_token: str = EOT,
                 mask_token: str = MASK):
        if context_length < 3:
            raise ValueError(f"tokenizer: context_length={context_length} must be at least 3")
        self.backend = backend
        backend.no_truncation()
        backend.no_padding()
        self.kind = kind
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        ids = {}
        for name, token in (("sot", sot_token), ("eot", eot_token), ("mask", mask_token)):
            tid = backend.token_to_id(token)
            if tid is None:
                raise ValueError(f"tokenizer ({kind}): special token {token!r} is not in the "
                                 f"vocabulary")
            ids[name] = tid
        self.sot_id, self.eot_id, self.mask_id = ids["sot"], ids["eot"], ids["mask"]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.special_ids = tuple(sorted({self.pad_id, self.sot_id, self.eot_id, self.mask_id}))
        self._tokens = (sot_token, eot_token, mask_token)

    # ---------------------------------------------------------------------------------- build
    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, context_length: int) -> "Tokenizer":
        """Learn a CLIP-style byte-level BPE of at most ``vocab_size`` entries on ``captions``.

        Deterministic: the same captions (in any order) give the same vocabulary and merges.
        The vocabulary is smaller than ``vocab_size`` when the corpus runs out of pairs to merge.
        """
        base = byte_symbols()
        n_fixed = 4 + 2 * len(base)
        if vocab_size < n_fixed:
            raise ValueError(f"model.tiny.vocab_size={vocab_size}: a byte-level BPE needs at least "
                             f"{n_fixed} entries (4 special tokens + 256 bytes + 256 word ends)")
        probe = _pipeline(_Backend(models.BPE()))
        counts: Counter = Counter()
        n_captions = 0
        for text in captions:
            n_captions += 1
            norm = probe.normalizer.normalize_str(text)
            for word, _ in probe.pre_tokenizer.pre_tokenize_str(norm):
                counts[tuple(word[:-1]) + (word[-1] + EOW,)] += 1
        if n_captions == 0:
            raise ValueError("tokenizer: no training captions to learn the BPE vocabulary from")
        merges = _learn_merges(counts, vocab_size - n_fixed)
        vocab = [PAD, SOT, EOT, MASK, *base, *(s + EOW for s in base), *(a + b for a, b in merges)]
        table = {tok: i for i, tok in enumerate(vocab)}
        if len(table) != len(vocab):
            raise AssertionError("tokenizer: duplicate vocabulary entries")  # merges are unique
        backend = _pipeline(_Backend(models.BPE(vocab=table, merges=merges, end_of_word_suffix=EOW,
                                                continuing_subword_prefix="")))
        backend.add_special_tokens([AddedToken(t, special=True) for t in (PAD, SOT, EOT, MASK)])
        return cls(backend, context_length=context_length, kind="bpe")

    @classmethod
    def from_clip(cls, name_or_path: str, context_length: int) -> "Tokenizer":
        """Wrap a real CLIP checkpoint's tokenizer (hub id or local folder) and add ``<|mask|>``."""
        from transformers import CLIPTokenizer

        local = Path(name_or_path).is_dir()
        if local and not any((Path(name_or_path) / f).is_file()
                             for f in ("tokenizer.json", "vocab.json")):
            raise OSError(f"model.backbone={name_or_path!r}: the folder holds no CLIP tokenizer "
                          f"(tokenizer.json or vocab.json + merges.txt)")
        try:
            clip_tok = CLIPTokenizer.from_pretrained(name_or_path, local_files_only=local)
        except OSError as err:
            raise OSError(f"model.backbone={name_or_path!r}: cannot load its CLIP tokenizer "
                          f"({'local folder' if local else 'hub id; needs network or cache'}): "
                          f"{err}") from None
        backend = _Backend.from_str(clip_tok.backend_tokenizer.to_str())
        backend.post_processor = None
        if backend.token_to_id(MASK) is None:
            backend.add_special_tokens([AddedToken(MASK, special=True)])
        return cls(backend, context_length=context_length, kind="clip",
                   sot_token=clip_tok.bos_token, eot_token=clip_tok.eos_token)

    # ---------------------------------------------------------------------------------- use
    def encode_words(self, texts: Sequence[str]) -> list[list[int]]:
        """BPE ids of each text, without special tokens or truncation."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs with SOT and EOT, before :meth:`__call__` cuts it to
        ``context_length`` (a count above it means the end of the text is not read)."""
        return [len(ids) + 2 for ids in self.encode_words(texts)]

    def kept_text(self, text: str) -> str:
        """The part of ``text`` that fits in ``context_length`` (decoded back to words)."""
        return self.decode(self.encode_words([text])[0][: self.context_length - 2])

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """``texts`` (N strings) -> (LongTensor [N, context_length], the token count of each text
        before the cut, as :meth:`count_tokens`)."""
        if isinstance(texts, str):
            raise TypeError("tokenizer: pass a list of captions, not a single string")
        body = self.context_length - 2
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        counts = []
        for row, ids in enumerate(self.encode_words(texts)):
            counts.append(len(ids) + 2)
            ids = ids[:body]
            out[row, 0] = self.sot_id
            out[row, 1:1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
            out[row, 1 + len(ids)] = self.eot_id
        return out, counts

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` (N strings) -> LongTensor [N, context_length]."""
        return self.encode(texts)[0]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids -> text (special tokens and padding dropped); for inspection."""
        ids = [int(i) for i in ids if int(i) not in self.special_ids]
        return self.backend.decode(ids).replace(EOW, " ").strip()

    # ---------------------------------------------------------------------------------- I/O
    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``pfcvr_tokenizer.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / _BACKEND) as tmp:
            self.backend.save(str(tmp))
        meta = {"kind": self.kind, "context_length": self.context_length, "pad_id": self.pad_id,
                "sot_token": self._tokens[0], "eot_token": self._tokens[1],
                "mask_token": self._tokens[2], "vocab_size": self.vocab_size}
        with atomic_path(folder / META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizer":
        """Restore a tokenizer written by :meth:`save` (offline; nothing is retrained)."""
        folder = Path(folder)
        for name in (_BACKEND, META_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: not a saved tokenizer ({name} is missing)")
        meta = json.loads((folder / META_FILE).read_text())
        tok = cls(_Backend.from_file(str(folder / _BACKEND)), context_length=meta["context_length"],
                  kind=meta["kind"], pad_id=meta["pad_id"], sot_token=meta["sot_token"],
                  eot_token=meta["eot_token"], mask_token=meta["mask_token"])
        if tok.vocab_size != meta["vocab_size"]:
            raise ValueError(f"{folder / META_FILE}: vocab_size {meta['vocab_size']} does not match "
                             f"{folder / _BACKEND} ({tok.vocab_size})")
        return tok

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind}, vocab_size={self.vocab_size}, "
                f"context_length={self.context_length})")
