"""``digits_av_captions``: the ``digits_av`` images with short English captions, for captioning (Frozen).

What it is
  The same 1,797 noisy, occluded 8x8 digit images as ``digits_av`` (same splits, same ``id`` = row of the
  shipped ``digits_av.npz``), each with a caption naming its digit, drawn from a few templates::

    this is a seven .            a handwritten seven .          the digit seven .
    a picture of a seven .       the number seven written by hand .
    a small image of the digit seven .

  Two builder configs:

  * ``one_template`` (the default, ``digits_av_captions``): one example per image, its template chosen by
    a random generator seeded with ``(CAPTION_SEED, id)``, so the dataset is the same on every machine and
    every build.
  * ``all_templates`` (``digits_av_captions/all_templates``): one example per image and template (six per
    image, as COCO has several captions per image), so the caption says nothing about an image beyond its
    digit. Frozen trains on this one: with one fixed template per image, a vision encoder can lower its
    training loss by memorising each image's template in its prefix (measured with one template: the
    validation caption loss rose after 500 of 1,500 steps; with all templates it falls throughout).

  "this is a <digit> ." is the template the
  few-shot prompts use (``PROMPT_PREFIX`` = "this is a"); the article is always "a" (also before "eight"),
  so that a prompt ending in "this is a" can be completed by any digit name or nonsense word.

Features
  * ``image``: uint8 ``[8, 8]``, exactly ``digits_av``'s image.
  * ``label``: the digit (ClassLabel ``zero`` .. ``nine``; data sources return a Python int).
  * ``caption``: the caption text (tfds Text; data sources return bytes).
  * ``caption_tokens``: int32 ``[T]``, the caption in ``Vocabulary.digits_captions()`` (45 tokens: ``<pad>``
    0, ``<unk>`` 1, ``<bos>`` 2, ``.`` 3, then words in sorted order), ending with the ``.`` token
    (``EOS_ID``), without ``<bos>``; T is 4 to 8.
  * ``id``: int32, the row in ``digits_av.npz``.

  The vocabulary also holds ``NONSENSE_WORDS`` (dax, blicket, ...: new names to bind to image classes inside
  a prompt, the "fast binding" protocol of Frozen) and ``PROMPT_WORDS`` (answer, with, or, what,
  question, ``?``, ``:``) for task-induction text; neither occurs in a caption.

Splits: train 1,259; validation 179; test 359 (those of ``digits_av``), six times as many examples in
``all_templates`` (7,554; 1,074; 2,154). ``text_corpus(split)`` gives the
captions of a split as token-id lists without building anything, e.g. to pretrain a small language model.
Like ``digits_av``, the builder writes ``array_record`` files (no TensorFlow, no network).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.digits_av import LABEL_NAMES, SPLITS, load_digits_av_npz
from mmjax.data.vocab import Vocabulary

CAPTION_SEED = 20211206  # seeds the per-example template choice (with the example's id)
PROMPT_PREFIX = "this is a"  # the few-shot prompt: "this is a" + <name> + " ."
PROMPT_TEMPLATE = PROMPT_PREFIX + " {digit} ."
TEMPLATES = (
  PROMPT_TEMPLATE,
  "a handwritten {digit} .",
  "the digit {digit} .",
  "a picture of a {digit} .",
  "the number {digit} written by hand .",
  "a small image of the digit {digit} .",
)
NONSENSE_WORDS = ("dax", "blicket", "wug", "zorp", "fep", "tufa", "gazzer", "toma", "kiki", "bouba")
PROMPT_WORDS = ("answer", "with", "or", "what", "question", "?", ":")
BOS = "<bos>"
EOS = "."
BOS_ID = 2  # id of ``<bos>`` in ``Vocabulary.digits_captions()``
EOS_ID = 3  # id of ``.``, the last token of every caption


def caption_templates() -> tuple[str, ...]:
  """The caption templates (``str.format`` strings with a ``{digit}`` field); the first is the prompt's."""
  return TEMPLATES


def template_index(index: int) -> int:
  """The template drawn for example ``index`` (its row in ``digits_av.npz``)."""
  rng = np.random.default_rng((CAPTION_SEED, int(index)))
  return int(rng.integers(len(TEMPLATES)))


def caption(label: int, index: int) -> str:
  """The caption of example ``index`` whose digit is ``label``, e.g. "the digit seven ."."""
  if not 0 <= int(label) < len(LABEL_NAMES):
    raise ValueError(f"label must be a digit 0..9, got {label!r}")
  return TEMPLATES[template_index(index)].format(digit=LABEL_NAMES[int(label)])


def encode_caption(text: str, vocab: Vocabulary | None = None) -> np.ndarray:
  """``text`` as int32 ids of the captions vocabulary; raises if a word is not in the vocabulary."""
  vocab = vocab or Vocabulary.digits_captions()
  ids = vocab.encode(text)
  if np.any(ids == vocab.unk_id):
    unknown = [w for w, i in zip(text.split(), ids, strict=True) if i == vocab.unk_id]
    raise ValueError(f"words {unknown} of {text!r} are not in the digits captions vocabulary")
  return ids


def text_corpus(split: str) -> list[list[int]]:
  """The captions of ``split`` (train / validation / test) as token-id lists, in id order.

  Each list ends with ``EOS_ID`` and has no ``<bos>``, exactly the examples' ``caption_tokens``."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
  data = load_digits_av_npz()
  vocab = Vocabulary.digits_captions()
  rows = np.nonzero(data["split"] == SPLITS[split])[0]
  return [encode_caption(caption(data["label"][i], i), vocab).tolist() for i in rows]


class DigitsAvCaptions(tfds.core.GeneratorBasedBuilder):
  """Builder for ``digits_av_captions`` (the digits_av images with templated captions)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Builder configs one_template (the 1.0.0 data) and all_templates."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name="one_template", description="One caption per image (template by id)."),
    tfds.core.BuilderConfig(name="all_templates", description="One example per image and template."),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    """Same as the base builder, but ``file_format`` defaults to array_record."""
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata and feature specification."""
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
          "caption": tfds.features.Text(),
          "caption_tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "id": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
      ),
      supervised_keys=None,
      homepage="https://archive.ics.uci.edu/dataset/80",
      citation="""\
@misc{alpaydin1998optical,
  title  = {Optical Recognition of Handwritten Digits},
  author = {Alpaydin, E. and Kaynak, C.},
  year   = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi    = {10.24432/C50P49}
}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Reads the embedded npz once and returns one generator per split."""
    del dl_manager  # Everything is embedded in the package.
    data = load_digits_av_npz()
    vocab = Vocabulary.digits_captions()
    return {name: self._generate_examples(data, vocab, code) for name, code in SPLITS.items()}

  def _generate_examples(self, data, vocab, split_code):
    """Yields ``(key, example)`` pairs of one split: key ``id`` (one_template) or
    ``id * len(TEMPLATES) + template`` (all_templates)."""
    every = self.builder_config.name == "all_templates"
    for i in np.nonzero(data["split"] == split_code)[0]:
      i = int(i)
      label = int(data["label"][i])
      for t in range(len(TEMPLATES)) if every else (template_index(i),):
        text = TEMPLATES[t].format(digit=LABEL_NAMES[label])
        yield i * len(TEMPLATES) + t if every else i, {
          "image": data["image"][i],
          "label": label,
          "caption": text,
          "caption_tokens": encode_caption(text, vocab),
          "id": i,
        }
