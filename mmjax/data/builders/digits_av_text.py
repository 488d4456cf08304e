"""``digits_av_text``: text-only documents in the ``digits_av_captions`` vocabulary, to pretrain the small
language model that Frozen's digits demo then freezes.

Why it exists
  Frozen (Tsimpoukelli et al., 2021) relies on abilities its 7B language model learned from web text: to
  read a caption as being *about* what precedes it, and to reuse a name defined earlier in the context
  (fast binding). A language model trained only on our captions could learn neither, so its pretraining
  text spells these patterns out, with a digit *word* standing where an image will later stand:

  * captions about a subject (20 %): ``seven the digit seven .``
  * binding episodes (65 %): two digits get nonsense names inside the document,
    ``seven this is a dax . three this is a blicket . seven this is a dax .`` (1-5 mentions per digit, the
    last line is the "query");
  * naming episodes (15 %): the same with the digits' real names (``seven this is a seven . ...``).

  The vision encoder trained by Frozen then learns to produce a prefix that plays the subject word's
  part; binding names to *images* inside a prompt is never trained, only the text pattern is.

Features: ``tokens`` int32 ``[T]`` (``Vocabulary.digits_captions()`` ids, no ``<bos>``; T <= 66) and
``kind`` (0 caption, 1 binding, 2 naming). Splits: train 8,000, validation 500 (fixed seeds).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.digits_av import LABEL_NAMES
from mmjax.data.builders.digits_av_captions import NONSENSE_WORDS, PROMPT_PREFIX, TEMPLATES, encode_caption
from mmjax.data.vocab import Vocabulary

SIZES = {"train": 8_000, "validation": 500}
SEEDS = {"train": 1, "validation": 2}
KINDS = ("caption", "binding", "naming")
PROBS = (0.20, 0.65, 0.15)
WAYS = 2  # digits named per episode (the few-shot evaluation is 2-way)
MAX_SHOTS = 5


def document(rng: np.random.Generator) -> tuple[str, int]:
  """One document and its kind index, drawn with ``rng`` (see the module docstring)."""
  kind = int(rng.choice(len(KINDS), p=PROBS))
  if kind == 0:
    digit = LABEL_NAMES[int(rng.integers(10))]
    return f"{digit} " + TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(digit=digit), kind
  ways = WAYS
  digits = [LABEL_NAMES[int(d)] for d in rng.choice(10, ways, replace=False)]
  names = [str(w) for w in rng.choice(NONSENSE_WORDS, ways, replace=False)] if kind == 1 else digits
  mentions = [w for w in range(ways) for _ in range(int(rng.integers(1, MAX_SHOTS + 1)))]
  order = [mentions[i] for i in rng.permutation(len(mentions))]
  query = int(rng.integers(ways))
  lines = [f"{digits[w]} {PROMPT_PREFIX} {names[w]} ." for w in order + [query]]
  return " ".join(lines), kind


class DigitsAvText(tfds.core.GeneratorBasedBuilder):
  """Builder for ``digits_av_text`` (generated documents; nothing to download)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Two-way episodes only; 65 % binding episodes."}

  def __init__(self, *, file_format=None, **kwargs):
    """Same as the base builder, but ``file_format`` defaults to array_record."""
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    """The dataset metadata and feature specification."""
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "kind": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    """One generator per split."""
    del dl_manager
    vocab = Vocabulary.digits_captions()
    return {name: self._generate_examples(name, vocab) for name in SIZES}

  def _generate_examples(self, split, vocab):
    """``(index, example)`` pairs of ``split``."""
    rng = np.random.default_rng(SEEDS[split])
    for i in range(SIZES[split]):
      text, kind = document(rng)
      yield i, {"tokens": encode_caption(text, vocab), "kind": kind}
