"""Tests for the embedded ``digits_av`` dataset, its vocabulary and builder."""

import subprocess
import sys

import numpy as np
import pytest

from mmjax.data import digits_av_phrases as phrases
from mmjax.data.builders import digits_av
from mmjax.data.vocab import Vocabulary

N = 1797
EXPECTED_SPLITS = {"train": 1259, "validation": 179, "test": 359}


@pytest.fixture(scope="module")
def data():
  """The shipped npz arrays."""
  return digits_av.load_digits_av_npz()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A ``DigitsAv`` builder prepared into a temporary directory."""
  builder = digits_av.DigitsAv(data_dir=str(tmp_path_factory.mktemp("tfds")), file_format="array_record")
  builder.download_and_prepare()
  return builder


def test_npz_keys_shapes_dtypes(data):
  """The npz has the documented keys, shapes and dtypes."""
  assert set(data) == {"image", "label", "audio", "audio_offsets", "text", "split", "voice"}
  assert data["image"].shape == (N, 8, 8) and data["image"].dtype == np.uint8
  assert data["label"].shape == (N,) and data["label"].dtype == np.int64
  assert set(np.unique(data["label"])) == set(range(10))
  assert data["audio"].ndim == 2 and data["audio"].shape[1] == 40
  assert data["audio"].dtype == np.float16
  assert np.all(np.isfinite(data["audio"]))
  assert data["audio_offsets"].shape == (N + 1,)
  assert data["audio_offsets"].dtype == np.int64
  assert data["text"].shape == (N,) and data["text"].dtype.kind == "U"
  assert data["voice"].shape == (N,) and data["voice"].dtype.kind == "U"
  assert data["split"].shape == (N,) and data["split"].dtype == np.uint8
  assert set(np.unique(data["split"])) == {0, 1, 2}


def test_audio_offsets_and_lengths(data):
  """Offsets tile the frame array and utterances are 20..100 frames."""
  offsets = data["audio_offsets"]
  assert offsets[0] == 0 and offsets[-1] == len(data["audio"])
  lengths = np.diff(offsets)
  assert lengths.min() >= 20 and lengths.max() <= 100
  assert len(np.unique(lengths)) > 10  # lengths vary per example


def test_audio_standardized_on_train(data):
  """Train frames have roughly zero mean / unit std per mel band."""
  offsets, split = data["audio_offsets"], data["split"]
  frames = np.concatenate(
    [data["audio"][offsets[i] : offsets[i + 1]] for i in np.nonzero(split == 0)[0]]
  ).astype(np.float32)
  np.testing.assert_allclose(frames.mean(0), 0.0, atol=0.02)
  np.testing.assert_allclose(frames.std(0), 1.0, atol=0.02)


def test_split_sizes_stratified(data):
  """Split counts match the documentation and every class is in every split."""
  for name, code in digits_av.SPLITS.items():
    mask = data["split"] == code
    assert mask.sum() == EXPECTED_SPLITS[name]
    assert set(np.unique(data["label"][mask])) == set(range(10))


def test_vocab_roundtrip_without_unk(data):
  """Every phrase encodes without ``<unk>`` and decodes back to itself."""
  vocab = Vocabulary.digits_av()
  assert 40 <= len(vocab) <= 122
  assert vocab.tokens[:2] == ["<pad>", "<unk>"]
  for text in data["text"]:
    text = str(text)
    assert text == text.lower() and text == " ".join(text.split())
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.size > 0
    assert not np.any(ids == vocab.unk_id)
    assert vocab.decode(ids) == text
  assert vocab.encode("an unseenword digit")[1] == vocab.unk_id
  assert vocab.decode([vocab.pad_id, *vocab.encode("a digit"), 0]) == "a digit"


def test_vocab_file_errors(tmp_path):
  """Missing or empty vocab files raise ``ValueError``."""
  with pytest.raises(ValueError, match="not found"):
    Vocabulary.from_file(tmp_path / "missing.txt")
  empty = tmp_path / "empty.txt"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty"):
    Vocabulary.from_file(empty)


def test_vocab_file_matches_phrase_words():
  """The shipped vocabulary only contains words the phrase grammar can emit."""
  words = Vocabulary.digits_av().tokens[2:]
  assert words == sorted(words)
  assert set(words) <= set(phrases.all_words())


def test_phrases_true_and_ambiguous(data):
  """Each phrase is true of its label and never pins down a unique digit."""
  n_uninformative = 0
  for text, label in zip(data["text"], data["label"], strict=True):
    cand = phrases.phrase_candidates(str(text))
    assert int(label) in cand, (text, label)
    if cand == phrases.ALL_DIGITS:
      n_uninformative += 1
    else:
      assert phrases.MIN_CANDIDATES <= len(cand) <= phrases.MAX_CANDIDATES
  assert 0.05 * N <= n_uninformative <= 0.15 * N


def test_phrase_parser_examples():
  """The shared property definitions give the documented candidate sets."""
  assert phrases.phrase_candidates("an even digit larger than five") == {6, 8}
  assert phrases.phrase_candidates("a digit with a closed loop") == {0, 6, 8, 9}
  assert phrases.phrase_candidates("this is an odd prime number") == {3, 5, 7}
  assert phrases.phrase_candidates("a numeral smaller than three") == {0, 1, 2}
  assert phrases.phrase_candidates("a handwritten figure") == phrases.ALL_DIGITS
  with pytest.raises(ValueError):
    phrases.phrase_candidates("a digit that is seven")


def test_builder_splits_and_features(prepared, data):
  """The prepared builder has the expected splits, shapes and dtypes."""
  assert prepared.name == "digits_av"
  assert prepared.info.file_format.value == "array_record"
  feats = prepared.info.features
  assert feats["image"].shape == (8, 8) and feats["image"].np_dtype == np.uint8
  assert feats["audio"].shape == (None, 40)
  assert feats["audio"].np_dtype == np.float32
  assert feats["text"].shape == (None,) and feats["text"].np_dtype == np.int32
  assert feats["id"].shape == () and feats["id"].np_dtype == np.int32
  assert feats["label"].names[7] == "seven"
  splits = prepared.info.splits
  assert {k: splits[k].num_examples for k in EXPECTED_SPLITS} == (EXPECTED_SPLITS)
  assert sum(splits[k].num_examples for k in EXPECTED_SPLITS) == N
  sources = prepared.as_data_source()
  vocab = Vocabulary.digits_av()
  for name, code in digits_av.SPLITS.items():
    src = sources[name]
    assert len(src) == EXPECTED_SPLITS[name]
    for j in range(0, len(src), 60):
      ex = src[j]
      assert set(ex) == {"image", "audio", "text", "label", "id"}
      # Scalars come back as Python ints from array_record data sources.
      assert isinstance(ex["id"], (int, np.integer))
      i = int(ex["id"])
      assert 0 <= i < N
      assert data["split"][i] == code
      assert ex["image"].shape == (8, 8) and ex["image"].dtype == np.uint8
      np.testing.assert_array_equal(ex["image"], data["image"][i])
      assert ex["audio"].dtype == np.float32 and ex["audio"].shape[1] == 40
      assert ex["audio"].shape[0] == np.diff(data["audio_offsets"])[i]
      assert ex["text"].dtype == np.int32 and ex["text"].ndim == 1
      assert vocab.decode(ex["text"]) == str(data["text"][i])
      assert int(ex["label"]) == data["label"][i]


def test_no_tensorflow_import():
  """Importing the builders and vocab must not import TensorFlow."""
  code = (
    "import sys, mmjax.data.builders, mmjax.data.vocab; "
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
  assert "tensorflow" not in sys.modules
