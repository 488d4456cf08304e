"""GPT-2's byte-level BPE tokenizer (Radford et al., 2019, sec. 2.2, "Input Representation") read from a
local ``vocab.json`` + ``merges.txt``, through the ``tokenizers`` package (nothing is downloaded).

Byte-level BPE works on the UTF-8 bytes of the text (each byte mapped to a printable symbol), after
splitting it into words with GPT-2's regular expression and no added prefix space, so every string
encodes without unknown tokens and decodes back exactly. ``<|endoftext|>`` is a special token: in text it
encodes to its single id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EOS_TOKEN = "<|endoftext|>"


class GPT2Tokenizer:
  """GPT-2 byte-level BPE: ``encode(text) -> ids``, ``decode(ids) -> text``, ``eos_id``.

  Build it with :meth:`from_dir` (a Hugging Face GPT-2 tokenizer directory) or :meth:`from_files`.
  """

  def __init__(self, tokenizer, eos_token: str | None = EOS_TOKEN):
    """Wraps a ``tokenizers.Tokenizer`` set up for byte-level BPE; use :meth:`from_dir` instead."""
    self._tok = tokenizer
    self.eos_token = eos_token
    self.eos_id = None if eos_token is None else tokenizer.token_to_id(eos_token)

  @classmethod
  def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, *,
                 eos_token: str | None = EOS_TOKEN) -> GPT2Tokenizer:
    """From a ``vocab.json`` (token -> id) and a ``merges.txt`` (one merge per line)."""
    try:
      from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError as e:  # pragma: no cover - a declared dependency
      raise ImportError("the GPT-2 tokenizer needs the 'tokenizers' package (pip install tokenizers)") from e
    for f, what in ((vocab_file, "vocab.json"), (merges_file, "merges.txt")):
      if not Path(f).is_file():
        raise FileNotFoundError(f"GPT-2 tokenizer file {what} not found at {f}")
    try:
      bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
      raise ValueError(f"could not read the GPT-2 BPE files {vocab_file} and {merges_file}: {e}") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if eos_token is not None:
      if tok.token_to_id(eos_token) is None:
        raise ValueError(f"the end-of-text token {eos_token!r} is not in {vocab_file}; pass eos_token=... "
                         "(or None)")
      tok.add_special_tokens([eos_token])
    return cls(tok, eos_token)

  @classmethod
  def from_dir(cls, path: str | os.PathLike, *, eos_token: str | None = EOS_TOKEN) -> GPT2Tokenizer:
    """From a local directory holding ``vocab.json`` and ``merges.txt`` (e.g. a Hugging Face ``gpt2``
    snapshot); a clear error names any missing file."""
    path = Path(path).expanduser()
    if not path.is_dir():
      raise FileNotFoundError(f"GPT-2 tokenizer directory {path} does not exist or is not a directory")
    missing = [n for n in ("vocab.json", "merges.txt") if not (path / n).is_file()]
    if missing:
      raise FileNotFoundError(f"GPT-2 tokenizer directory {path} lacks {' and '.join(missing)} (the "
                              "byte-level BPE needs vocab.json and merges.txt)")
    return cls.from_files(path / "vocab.json", path / "merges.txt", eos_token=eos_token)

  @property
  def vocab_size(self) -> int:
    """Number of token ids (the GPT-2 checkpoints' embedding has 50257 rows)."""
    return self._tok.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no end-of-text token added)."""
    return self._tok.encode(text).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of token ids (special tokens kept)."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def encode_batch(self, texts: Sequence[str], *, length: int | None = None, pad_left: bool = True,
                   pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [B, L] int32, mask [B, L] bool)`` padded to ``length`` (default: the longest).

    Left padding (the default) suits decoding: every prompt ends at the last column. ``pad_id`` defaults to
    ``eos_id`` (else 0); texts longer than ``length`` are an error.
    """
    seqs = [self.encode(t) for t in texts]
    n = max((len(s) for s in seqs), default=0) if length is None else length
    too_long = [i for i, s in enumerate(seqs) if len(s) > n]
    if too_long:
      raise ValueError(f"texts {too_long} encode to more than length={n} tokens")
    fill = (self.eos_id if self.eos_id is not None else 0) if pad_id is None else pad_id
    ids = np.full((len(seqs), n), fill, np.int32)
    mask = np.zeros((len(seqs), n), bool)
    for i, s in enumerate(seqs):
      sl = slice(n - len(s), n) if pad_left else slice(0, len(s))
      ids[i, sl], mask[i, sl] = s, True
    return ids, mask
