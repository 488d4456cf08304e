"""``digits_av_qa``: yes/no and "which digit" questions about the ``digits_av`` images, for the
question-answering heads of the vision-language models (VisualBERT, ViLBERT/LXMERT).

What it is
  Every one of the 1,797 noisy, occluded 8x8 digit images of ``digits_av`` (same splits, same ``id``) with
  the same five questions, whose answers follow from the digit::

    0  is the digit even ?                -> yes / no
    1  is the digit larger than five ?    -> yes / no
    2  is the digit smaller than three ?  -> yes / no
    3  is this a <digit> ?                -> yes / no  (the digit asked is the true one for about half the
                                                        images: a generator seeded with (QA_SEED, id))
    4  what digit is this ?               -> zero .. nine

  The answer is a class of ``ANSWERS`` ("no", "yes", "zero", ..., "nine": 12 classes), as VQA models
  classify over an answer vocabulary. A question alone does not give its answer: answering from the
  question type only (the majority answer of each type on train) scores :func:`question_only_accuracy`
  (48.5 % on test), the baseline a model that ignores the image can reach.

Features
  * ``image``: uint8 ``[8, 8]``, exactly ``digits_av``'s image.
  * ``question``: the question text (tfds Text; data sources return bytes).
  * ``question_tokens``: int32 ``[T]`` (T = 5 to 7) in ``Vocabulary.digits_vl()``, without ``<cls>`` or
    ``<sep>`` (the models add them).
  * ``answer``: ClassLabel of ``ANSWERS``.
  * ``question_type``: int32, the row of ``QUESTIONS`` (0-4).
  * ``label``: the digit (ClassLabel ``zero`` .. ``nine``).
  * ``id``: int32, the row in ``digits_av.npz``.

Splits: train 6,295; validation 895; test 1,795 (five examples per image of ``digits_av``'s splits). The
builder writes ``array_record`` files (no TensorFlow, no network).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.digits_av import LABEL_NAMES, SPLITS, load_digits_av_npz
from mmjax.data.vocab import Vocabulary

QA_SEED = 20190809  # seeds the digit asked by "is this a <digit> ?" (with the example's id)
QUESTIONS = (
  "is the digit even ?",
  "is the digit larger than five ?",
  "is the digit smaller than three ?",
  "is this a {digit} ?",
  "what digit is this ?",
)
ANSWERS = ("no", "yes") + LABEL_NAMES


def asked_digit(label: int, index: int) -> int:
  """The digit that "is this a <digit> ?" names for example ``index`` of digit ``label``: the true digit
  with probability 1/2, otherwise one of the nine others uniformly (seeded with ``(QA_SEED, index)``)."""
  rng = np.random.default_rng((QA_SEED, int(index)))
  if rng.random() < 0.5:
    return int(label)
  return int((label + 1 + rng.integers(9)) % 10)


def question_and_answer(question_type: int, label: int, index: int) -> tuple[str, int]:
  """``(question text, answer class)`` of question ``question_type`` (0-4) about example ``index``, whose
  digit is ``label``; the answer indexes ``ANSWERS``."""
  if not 0 <= int(label) < len(LABEL_NAMES):
    raise ValueError(f"label must be a digit 0..9, got {label!r}")
  label = int(label)
  yes_no = lambda truth: ANSWERS.index("yes" if truth else "no")  # noqa: E731
  if question_type == 0:
    return QUESTIONS[0], yes_no(label % 2 == 0)
  if question_type == 1:
    return QUESTIONS[1], yes_no(label > 5)
  if question_type == 2:
    return QUESTIONS[2], yes_no(label < 3)
  if question_type == 3:
    asked = asked_digit(label, index)
    return QUESTIONS[3].format(digit=LABEL_NAMES[asked]), yes_no(asked == label)
  if question_type == 4:
    return QUESTIONS[4], ANSWERS.index(LABEL_NAMES[label])
  raise ValueError(f"question_type must be 0..{len(QUESTIONS) - 1}, got {question_type!r}")


def examples(split: str) -> Iterator[dict]:
  """The examples of ``split`` as dicts of numpy values (the builder's, in key order), without building
  anything."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
  data = load_digits_av_npz()
  vocab = Vocabulary.digits_vl()
  for i in np.nonzero(data["split"] == SPLITS[split])[0]:
    i = int(i)
    label = int(data["label"][i])
    for t in range(len(QUESTIONS)):
      text, answer = question_and_answer(t, label, i)
      tokens = vocab.encode(text)
      if np.any(tokens == vocab.unk_id):
        raise ValueError(f"question {text!r} has words outside Vocabulary.digits_vl()")
      yield {"image": data["image"][i], "question": text, "question_tokens": tokens, "answer": answer,
             "question_type": np.int32(t), "label": label, "id": np.int32(i)}


def question_only_accuracy(split: str = "test") -> float:
  """Accuracy on ``split`` of answering each question with the most frequent training answer of its
  question text (for "is this a <digit> ?": of that exact text): the best a model blind to the image does
  in expectation."""
  counts: dict[str, Counter] = {}
  for ex in examples("train"):
    counts.setdefault(ex["question"], Counter())[ex["answer"]] += 1
  majority = {q: c.most_common(1)[0][0] for q, c in counts.items()}
  hits = [majority.get(ex["question"], -1) == ex["answer"] for ex in examples(split)]
  return float(np.mean(hits))


class DigitsAvQa(tfds.core.GeneratorBasedBuilder):
  """Builder for ``digits_av_qa`` (five templated questions per digits_av image)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

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
          "question": tfds.features.Text(),
          "question_tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "answer": tfds.features.ClassLabel(names=list(ANSWERS)),
          "question_type": tfds.features.Tensor(shape=(), dtype=np.int32),
          "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
          "id": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
      ),
      supervised_keys=None,
      homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """One generator per split; everything is embedded in the package."""
    del dl_manager
    return {name: self._generate_examples(name) for name in SPLITS}

  def _generate_examples(self, split):
    """Yields ``(id * 5 + question_type, example)`` pairs of one split."""
    for ex in examples(split):
      yield int(ex["id"]) * len(QUESTIONS) + int(ex["question_type"]), ex
