"""``digits_av_qa``: every answer follows from the digit, the questions are balanced enough that the image
is needed, and the builder's examples reach the pipeline."""

from collections import Counter

import numpy as np
import pytest

from mmjax.config import default_config
from mmjax.data import pipeline
from mmjax.data.builders import digits_av_qa as qa
from mmjax.data.builders.digits_av import LABEL_NAMES, load_digits_av_npz
from mmjax.data.vocab import Vocabulary


def test_vl_vocabulary_extends_the_captions_vocabulary_with_the_same_ids():
  captions, vl = Vocabulary.digits_captions(), Vocabulary.digits_vl()
  assert vl.tokens[:len(captions)] == captions.tokens
  for special in ("<cls>", "<sep>", "<mask>"):
    assert vl.tokens[vl.id(special)] == special
  with pytest.raises(KeyError, match="not in this vocabulary"):
    vl.id("<nope>")


def _answer_from_text(question: str, digit: int) -> str:
  """The answer, worked out from the question's words alone (independently of the builder's table)."""
  words = question.split()
  if "even" in words:
    return "yes" if digit % 2 == 0 else "no"
  if "larger" in words:
    return "yes" if digit > int(LABEL_NAMES.index(words[words.index("than") + 1])) else "no"
  if "smaller" in words:
    return "yes" if digit < int(LABEL_NAMES.index(words[words.index("than") + 1])) else "no"
  if words[0] == "what":
    return LABEL_NAMES[digit]
  return "yes" if words[3] == LABEL_NAMES[digit] else "no"


def test_every_answer_follows_from_the_digit():
  data = load_digits_av_npz()
  vocab = Vocabulary.digits_vl()
  examples = list(qa.examples("validation"))
  assert len(examples) == 5 * int((data["split"] == 1).sum())
  for ex in examples:
    assert ex["label"] == data["label"][ex["id"]]
    np.testing.assert_array_equal(ex["image"], data["image"][ex["id"]])
    assert qa.ANSWERS[ex["answer"]] == _answer_from_text(ex["question"], ex["label"])
    assert vocab.decode(ex["question_tokens"]) == ex["question"]
  # "is this a <digit> ?" names the true digit for about half of the images, so its answer is not the text's
  asked = [qa.ANSWERS[ex["answer"]] for ex in qa.examples("train") if ex["question_type"] == 3]
  assert 0.45 < Counter(asked)["yes"] / len(asked) < 0.55
  assert 0.40 < qa.question_only_accuracy("test") < 0.55  # the question alone leaves most answers open


def test_digits_av_qa_through_the_pipeline(tmp_path):
  cfg = default_config().data
  cfg.update({"name": "digits_av_qa", "data_dir": str(tmp_path), "max_lengths": {"question_tokens": 7},
              "prepare": True})
  src = pipeline.open_split(cfg, "test")
  assert len(src) == 1795
  batch = next(pipeline.train_batches(cfg, global_batch_size=4, seed=0))
  assert batch["question_tokens"].shape == (4, 7) and batch["question_tokens_mask"].shape == (4, 7)
  assert batch["image"].shape == (4, 8, 8) and batch["answer"].shape == (4,)
