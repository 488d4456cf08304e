"""``digits_av``: a tiny embedded audio / image / text dataset of digits.

What it is
  The 1,797 handwritten 8x8 digits of scikit-learn's ``load_digits`` (a copy of
  the test part of the UCI "Optical Recognition of Handwritten Digits" data set,
  Alpaydin & Kaynak, 1998), each paired with

  * ``audio``: the digit's English name ("seven") spoken by espeak-ng
    (https://github.com/espeak-ng/espeak-ng) with a random voice (8 English
    accents x 8 voice variants), speed (120-220 wpm) and pitch (10-90), as
    log-mel frames: 16 kHz, 25 ms Hann window, 10 ms hop, 40 mel bands,
    ``log(mel power + 1e-6)``, standardized per band with the train-split
    mean/std. Leading/trailing silence is trimmed, so utterances are 30-80
    frames long (varying per example).
  * ``text``: a short, deliberately ambiguous phrase such as
    "an even digit larger than five" (-> 6 or 8) or "a prime number below six"
    (-> 2, 3 or 5), as int32 token ids of ``Vocabulary.digits_av()`` (82
    tokens including ``<pad>`` / ``<unk>``; no padding). Informative phrases
    narrow the digit to 2-4 candidates, never to one; about 10 % are
    uninformative ("a handwritten digit"). The property definitions (e.g. a
    "closed loop" means 0, 6, 8, 9) live in ``mmjax.data.digits_av_phrases``.

  The modalities are unaligned (audio has a variable number of frames, text a
  variable number of tokens).

Noise / ambiguity design
  No single modality is sufficient: images get Gaussian pixel noise
  (std 0.08 of full range) plus one random occluder (a 2-pixel horizontal or
  vertical band, or a 3x3/4x4 patch, of random constant intensity); audio gets
  spectrally tilted white noise mixed in at a random SNR in [-10, 2] dB before
  feature extraction; text is ambiguous by construction.

  Proxy test accuracies of scikit-learn logistic regression (standardized
  features, C=0.1) trained on the train split:

  ==========================================  ========
  features                                    test acc
  ==========================================  ========
  image (flattened 64 pixels)                 0.786
  audio (mean + std of frames, 80 dims)       0.786
  text (bag of words)                         0.351
  fused (concatenation of the three)          0.964
  ==========================================  ========

Splits (fixed, seeded, stratified by label, ~70/10/20 %)
  train 1,259; validation 179; test 359.

Storage
  The data ship inside the package (``mmjax/data/assets/digits_av.npz``,
  ``digits_av_vocab.txt``), generated once by ``scripts/make_digits_av.py
  --seed 0``; preparing the builder needs no network and takes seconds.
  TensorFlow is not required: the builder writes ``array_record`` files (the
  default of this builder) and is read with ``builder.as_data_source()`` or
  ``tfds.data_source("digits_av", ...)``. Never use ``tfrecord`` /
  ``as_dataset`` with it. ``array_record`` does not keep the write order, so
  use the ``id`` feature (row in the npz) to identify examples. Data sources
  return scalar features (``label``, ``id``) as Python ints.

Example::

  from mmjax.data.builders import DigitsAv
  builder = DigitsAv(data_dir="/tmp/tfds")
  builder.download_and_prepare()
  train = builder.as_data_source()["train"]
  ex = train[0]  # {"image": (8, 8) uint8, "audio": (T, 40) float32, ...}
"""

from __future__ import annotations

import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.vocab import Vocabulary

NUM_EXAMPLES = 1797
N_MELS = 40
SPLITS = {"train": 0, "validation": 1, "test": 2}
LABEL_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_digits_av_npz() -> dict[str, np.ndarray]:
  """Loads every array of the shipped ``digits_av.npz`` into memory."""
  ref = importlib.resources.files("mmjax.data.assets").joinpath("digits_av.npz")
  with ref.open("rb") as f, np.load(f) as npz:
    return {k: npz[k] for k in npz.files}


class DigitsAv(tfds.core.GeneratorBasedBuilder):
  """Builder for ``digits_av`` (noisy digit images, speech and vague text)."""

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
          # Raw-bytes encoding: ~10x faster to serialize than float lists.
          "audio": tfds.features.Tensor(
            shape=(None, N_MELS), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
          ),
          "text": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
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
    vocab = Vocabulary.digits_av()
    return {name: self._generate_examples(data, vocab, code) for name, code in SPLITS.items()}

  def _generate_examples(self, data, vocab, split_code):
    """Yields ``(id, example)`` pairs of one split."""
    offsets = data["audio_offsets"]
    for i in np.nonzero(data["split"] == split_code)[0]:
      i = int(i)
      yield (
        i,
        {
          "image": data["image"][i],
          "audio": data["audio"][offsets[i] : offsets[i + 1]].astype(np.float32),
          "text": vocab.encode(str(data["text"][i])),
          "label": int(data["label"][i]),
          "id": i,
        },
      )
