"""``digits_av_text``: text-only documents in the ``digits_av_captions`` vocabulary, to pretrain the small
language model that Frozen's digits demo then freezes.

Why it exists
  Frozen (Tsimpoukelli et al., 2021) relies on abilities its 7B language model learned from web text: to
  read a caption as being *about* what precedes it, and to reuse a name defined earlier in the context
  (fast binding). A language model trained only on our captions could learn neither, so its pretraining
  text spells these patterns out, with a digit *word* standing where an image will later stand. The
  stand-in is the word repeated ``SUBJECT_REPEATS`` (= 2) times, because Frozen's image prefix is 2
  vectors: a text line then has exactly the positions of an image line, and the positional attention
  the language model learns on text carries over to interleaved image prompts. Half of the stand-ins have
  one of the two words, at random, replaced by a filler word (``seven the this is a dax .``), so that the
  LM reads an image's identity from either position and tolerates the other one carrying something else,
  as a learned image prefix does. (Measured: an LM pretrained on exact repeats only read the second word,
  ``seven <unk>`` bound at chance and ``<unk> seven`` at 99 %, and Frozen's prefixes, which put the class
  in the first vector, bound at chance.)

  * captions about a subject (10 %): ``seven seven the digit seven .``
  * binding episodes (40 %): two digits get nonsense names inside the document,
    ``seven seven this is a dax . three three this is a blicket . seven seven this is a dax .`` (1-5
    mentions per digit in random order, then a "query" line about one of them);
  * naming episodes (10 %): the same with the digits' real names (``seven seven this is a seven . ...``);
  * repeated sequences (40 %): 4-15 random words of the vocabulary, then the same words again. These
    train in-context copying ("induction heads", Olsson et al., 2022, "In-context Learning and Induction
    Heads"), which binding is built on. Measured: without them a 2-layer, 64-wide LM stayed at chance on
    text-only binding after 10,000 steps (several learning rates, widths and depths); with them it binds
    at 97-98 % by step 6,000 (batch 64; ``configs/frozen_digits.py:lm``).

  The vision encoder trained by Frozen then learns to produce a prefix that plays the subject words'
  part; binding names to *images* inside a prompt is never trained, only the text pattern is.

Features: ``tokens`` int32 ``[T]`` (``Vocabulary.digits_captions()`` ids, no ``<bos>``; T <= 77) and
``kind`` (0 caption, 1 binding, 2 naming, 3 repeat). Splits: train 50,000, validation 1,000 (fixed seeds).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.digits_av import LABEL_NAMES
from mmjax.data.builders.digits_av_captions import NONSENSE_WORDS, PROMPT_PREFIX, TEMPLATES, encode_caption
from mmjax.data.vocab import Vocabulary

SIZES = {"train": 50_000, "validation": 1_000}
SEEDS = {"train": 1, "validation": 2}
KINDS = ("caption", "binding", "naming", "repeat")
PROBS = (0.10, 0.40, 0.10, 0.40)
WAYS = 2  # digits named per episode (the few-shot evaluation is 2-way)
MAX_SHOTS = 5
SUBJECT_REPEATS = 2  # words standing for one image: Frozen's num_prefix in configs/frozen_digits.py
REPEAT_WORDS = (4, 15)  # length range of a repeated sequence
MAX_TOKENS = (2 * MAX_SHOTS + 1) * (SUBJECT_REPEATS + 5)  # longest document: a 5 + 5 shot episode + query


FILLER_PROB = 0.5  # chance that one of a subject's words is a filler word instead of the digit


def filler_words(vocab: Vocabulary) -> list[str]:
  """Words that may stand beside the digit in a subject: neither digits, names, ``.`` nor specials."""
  return [w for w in vocab.tokens if not w.startswith("<") and w not in LABEL_NAMES and w != "."
          and w not in NONSENSE_WORDS]


def subject(digit: str, rng: np.random.Generator | None = None, fillers=()) -> str:
  """The text that stands for an image of ``digit``: the word ``SUBJECT_REPEATS`` times, or (with ``rng``,
  probability ``FILLER_PROB``) with one position, drawn at random, taken by a random filler word."""
  words = [digit] * SUBJECT_REPEATS
  if rng is not None and fillers and rng.random() < FILLER_PROB:
    words[int(rng.integers(SUBJECT_REPEATS))] = fillers[int(rng.integers(len(fillers)))]
  return " ".join(words)


def document(rng: np.random.Generator, vocab: Vocabulary | None = None) -> tuple[str, int]:
  """One document and its kind index, drawn with ``rng`` (see the module docstring)."""
  vocab = vocab or Vocabulary.digits_captions()
  fillers = filler_words(vocab)
  kind = int(rng.choice(len(KINDS), p=PROBS))
  if kind == 0:
    digit = LABEL_NAMES[int(rng.integers(10))]
    return (f"{subject(digit, rng, fillers)} " + TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
        digit=digit), kind)
  if kind == 3:
    words = [w for w in vocab.tokens if not w.startswith("<")]
    seq = [words[i] for i in rng.integers(0, len(words), int(rng.integers(REPEAT_WORDS[0],
                                                                          REPEAT_WORDS[1] + 1)))]
    return " ".join(seq + seq), kind
  digits = [LABEL_NAMES[int(d)] for d in rng.choice(10, WAYS, replace=False)]
  names = [str(w) for w in rng.choice(NONSENSE_WORDS, WAYS, replace=False)] if kind == 1 else digits
  mentions = [w for w in range(WAYS) for _ in range(int(rng.integers(1, MAX_SHOTS + 1)))]
  order = [mentions[i] for i in rng.permutation(len(mentions))]
  query = int(rng.integers(WAYS))
  lines = [f"{subject(digits[w], rng, fillers)} {PROMPT_PREFIX} {names[w]} ." for w in order + [query]]
  return " ".join(lines), kind


class DigitsAvText(tfds.core.GeneratorBasedBuilder):
  """Builder for ``digits_av_text`` (generated documents; nothing to download)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Two-way episodes only; 65 % binding episodes.",
                   "2.0.0": "Subjects as two words (the image prefix's length); repeated-sequence "
                            "documents; 50,000 training documents."}

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
      text, kind = document(rng, vocab)
      yield i, {"tokens": encode_caption(text, vocab), "kind": kind}
