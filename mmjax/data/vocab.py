"""Word-level vocabulary for the text modality of embedded datasets."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable

import numpy as np

PAD = "<pad>"
UNK = "<unk>"


class Vocabulary:
  """Maps lower-case, space-separated words to integer ids and back.

  Id 0 is ``<pad>`` and id 1 is ``<unk>``; unknown words encode to ``<unk>``.
  """

  pad_id = 0
  unk_id = 1

  def __init__(self, tokens: Iterable[str]):
    """Creates a vocabulary from tokens; the first two must be pad and unk."""
    self._tokens: list[str] = list(tokens)
    if self._tokens[:2] != [PAD, UNK]:
      raise ValueError(f"Vocabulary must start with {PAD!r} and {UNK!r}, got {self._tokens[:2]!r}")
    if len(set(self._tokens)) != len(self._tokens):
      raise ValueError("Vocabulary contains duplicate tokens")
    self._index = {t: i for i, t in enumerate(self._tokens)}

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> Vocabulary:
    """Loads a vocabulary with one token per line.

    Raises:
      ValueError: if the file is missing or contains no tokens.
    """
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except FileNotFoundError as e:
      raise ValueError(f"Vocabulary file not found: {path}") from e
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
      raise ValueError(f"Vocabulary file is empty: {path}")
    return cls(tokens)

  @classmethod
  def digits_av(cls) -> Vocabulary:
    """Loads the vocabulary shipped with the ``digits_av`` dataset."""
    ref = importlib.resources.files("mmjax.data.assets").joinpath("digits_av_vocab.txt")
    with importlib.resources.as_file(ref) as path:
      return cls.from_file(path)

  @classmethod
  def digits_captions(cls) -> Vocabulary:
    """Loads the vocabulary of ``digits_av_captions`` (``<pad>``, ``<unk>``, ``<bos>``, ``.``, then words)."""
    ref = importlib.resources.files("mmjax.data.assets").joinpath("digits_captions_vocab.txt")
    with importlib.resources.as_file(ref) as path:
      return cls.from_file(path)

  @classmethod
  def digits_vl(cls) -> Vocabulary:
    """Loads the vision-language vocabulary of ``digits_av_qa``: ``digits_captions()`` with the same ids (so
    captions encode identically), then the question words ``even larger smaller than`` and the special
    tokens ``<cls>``, ``<sep>``, ``<mask>`` of the BERT-style models (VisualBERT, ViLBERT)."""
    ref = importlib.resources.files("mmjax.data.assets").joinpath("digits_vl_vocab.txt")
    with importlib.resources.as_file(ref) as path:
      return cls.from_file(path)

  def id(self, token: str) -> int:
    """The id of ``token``; a ``KeyError`` naming the token when it is not in the vocabulary."""
    if token not in self._index:
      raise KeyError(f"token {token!r} is not in this vocabulary of {len(self)} tokens")
    return self._index[token]

  @property
  def tokens(self) -> list[str]:
    """All tokens, indexed by id."""
    return list(self._tokens)

  def __len__(self) -> int:
    """Number of tokens, including ``<pad>`` and ``<unk>``."""
    return len(self._tokens)

  def encode(self, text: str) -> np.ndarray:
    """Splits ``text`` on whitespace and returns int32 ids (no padding)."""
    return np.array([self._index.get(w, self.unk_id) for w in text.split()], dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Joins the tokens of ``ids`` with spaces, skipping ``<pad>``."""
    return " ".join(self._tokens[int(i)] for i in np.asarray(ids).ravel() if int(i) != self.pad_id)
