"""``cmu_mosi``, ``cmu_mosei``, ``iemocap``: the MulT word-level feature sets, read from the original pickles.

Source
  The preprocessed pickles distributed with the original MulT code (yaohungt/Multimodal-Transformer), put by
  hand in the TFDS manual directory (``<data_dir>/downloads/manual`` unless ``DownloadConfig.manual_dir``
  says otherwise). Each dataset has two configs, ``aligned`` (``<prefix>_data.pkl``: the three modalities
  averaged over words, same length) and ``unaligned`` (``<prefix>_data_noalign.pkl``: native frame rates),
  e.g. ``cmu_mosei/unaligned`` (the default config). The pickles are read with mmjax's restricted unpickler
  (``mmjax.data.safe_pickle``): a file that names anything but numpy arrays and containers is refused.

Features (float32, ``[T, F]``; widths text / audio / vision: MOSI 300 / 5 / 20, MOSEI and IEMOCAP
300 / 74 / 35)
  * ``text`` GloVe vectors, ``audio`` COVAREP, ``vision`` Facet features.
  * Padding: the originals are zero-padded at the FRONT to a fixed length. The leading all-zero time steps are
    stripped, so features are variable-length and the mmjax pipeline pads them at the BACK with a
    ``<name>_mask``. ``unaligned``: each modality is stripped on its own. ``aligned``: the three are stripped
    by the same number of steps (those all-zero in every modality), so they stay aligned and equally long. At
    least one step is always kept (an example that is all zeros keeps its last step). Zero-padding a feature
    at the front back to the original length gives the sanitised original array exactly. Models that read
    "the last time step" (MulT) must read the last real step, as given by the mask.
  * Non-finite values (-inf in some audio entries; +inf and NaN too) are set to 0, as the original loaders
    set -inf audio to 0; this happens before stripping. The number replaced per split and feature is kept
    in the info's metadata (``info.metadata["nonfinite_set_to_zero"]``, saved with the prepared dataset)
    and printed by ``mmjax data build`` (:meth:`MultimodalSentiment.build_notes`).
  * ``label``: MOSI / MOSEI float32 sentiment in [-3, 3] (the ``[N, 1, 1]`` labels); IEMOCAP int32 ``[4]``,
    one binary flag per emotion (Neutral, Happy, Sad, Angry), the argmax of each emotion's 2-way one-hot
    (1 = present), as the original code trains it.
  * ``id``: the original ``[N, 3]`` id entries (bytes decoded as UTF-8) joined with ``|``, or
    ``<split>/<row>`` when the pickle has no ids; ``index``: the row in the original split
    (``array_record`` does not keep the write order).

Splits: ``train``, ``validation`` (the pickle's ``valid``), ``test`` (MOSEI: 16,326 / 1,871 / 4,659).

Checks
  Every split is checked before any example is written: present and non-empty, the three modalities and
  ``labels`` present, features ``[N, T, width]`` with this dataset's widths, labels finite and in range
  (sentiment in [-3, 3]; each IEMOCAP emotion a one-hot pair of 0 / 1). A file that fails raises a
  :class:`mmjax.data.errors.DatasetError` naming the file, the split and how to fix it.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mmjax.data.errors import DatasetError
from mmjax.data.safe_pickle import load_pickle

SPLITS = {"train": "train", "validation": "valid", "test": "test"}
MODALITIES = ("text", "audio", "vision")
IEMOCAP_EMOTIONS = ("neutral", "happy", "sad", "angry")
SENTIMENT_RANGE = 3.0  # MOSI / MOSEI labels lie in [-3, 3]

_MULT_CITATION = """\
@inproceedings{tsai2019multimodal,
  title     = {Multimodal Transformer for Unaligned Multimodal Language Sequences},
  author    = {Tsai, Yao-Hung Hubert and Bai, Shaojie and Liang, Paul Pu and Kolter, J. Zico and
               Morency, Louis-Philippe and Salakhutdinov, Ruslan},
  booktitle = {Proceedings of the 57th Annual Meeting of the Association for Computational Linguistics},
  year      = {2019}
}"""

_CONFIGS = [
    tfds.core.BuilderConfig(name="unaligned", description="Features at their native rates (*_noalign.pkl)."),
    tfds.core.BuilderConfig(name="aligned", description="Features averaged over words (*_data.pkl)."),
]


def _float_seq(width: int):
  return tfds.features.Tensor(shape=(None, width), dtype=np.float32, encoding=tfds.features.Encoding.BYTES)


def sanitize(x) -> tuple[np.ndarray, int]:
  """``x`` as float32 with every non-finite value set to 0, and the number of values replaced."""
  x = np.asarray(x, np.float32)
  bad = ~np.isfinite(x)
  count = int(bad.sum())
  if count:
    if not x.flags.writeable:
      x = x.copy()
    x[bad] = 0.0
  return x, count


def leading_padding(*arrays: np.ndarray) -> np.ndarray:
  """Per example, the number of leading time steps that are all zero in every ``[N, T, F]`` array.

  Never the whole sequence: an all-zero example keeps its last step."""
  nonzero = np.zeros(arrays[0].shape[:2], bool)
  for x in arrays:
    nonzero |= np.any(x != 0, axis=2)
  t = nonzero.shape[1]
  return np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), t - 1)


def _id_string(row) -> str:
  items = np.asarray(row, dtype=object).reshape(-1)
  return "|".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in items)


class MultimodalSentiment(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder of the MulT pickles; subclasses set the file prefix, widths and label kind."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _CONFIGS
  DEFAULT_BUILDER_CONFIG_NAME = "unaligned"
  FILE_PREFIX: str = ""
  WIDTHS: dict[str, int] = {}
  CLASSIFICATION = False  # IEMOCAP: 4 binary emotion labels instead of a sentiment score
  CITATION = ""

  def __init__(self, *, file_format=None, **kwargs):
    """Same as the base builder, but ``file_format`` defaults to array_record."""
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @classmethod
  def file_name(cls, config_name: str) -> str:
    """The pickle that config ``config_name`` reads from the manual directory."""
    return f"{cls.FILE_PREFIX}_data{'_noalign' if config_name == 'unaligned' else ''}.pkl"

  @classmethod
  def _instructions(cls) -> str:
    return (
        f"Put the preprocessed pickles distributed with the original MulT code "
        f"(yaohungt/Multimodal-Transformer) in the TFDS manual directory (default "
        f"<data_dir>/downloads/manual): {cls.file_name('aligned')} for the `aligned` config and "
        f"{cls.file_name('unaligned')} for `unaligned`. They are read with a restricted unpickler."
    )

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.FILE_PREFIX:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls._instructions()

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata and feature specification."""
    if self.CLASSIFICATION:
      label = tfds.features.Tensor(shape=(len(IEMOCAP_EMOTIONS),), dtype=np.int32)
    else:
      label = tfds.features.Scalar(dtype=np.float32)
    features = {k: _float_seq(self.WIDTHS[k]) for k in MODALITIES}
    features.update(label=label, id=tfds.features.Text(), index=tfds.features.Scalar(dtype=np.int32))
    return self.dataset_info_from_configs(
        description=f"{self.__class__.__doc__}\n\n{__doc__}",
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),  # "nonfinite_set_to_zero": {split: {feature: counts}}
        homepage="https://github.com/yaohungt/Multimodal-Transformer",
        citation=f"{self.CITATION}\n{_MULT_CITATION}",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Loads and checks the config's pickle once, every split before any example is written; returns one
    generator per split."""
    name = self.file_name(self.builder_config.name)
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:
      manual_dir = None
    if manual_dir is None or not (manual_dir / name).exists():
      where = manual_dir or getattr(dl_manager, "_manual_dir", None) or "the TFDS manual directory"
      full = f"{self.name}/{self.builder_config.name}"
      raise DatasetError(
          f"{full} needs {name} in {where}, which is missing. Pass the folder that holds it: "
          f"`mmjax data build {full} --manual_dir DIR`. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    path = manual_dir / name
    try:
      with path.open("rb") as f:
        data = load_pickle(f)
    except (DatasetError, MemoryError):
      raise
    except OSError as e:
      raise DatasetError(f"cannot read {path} ({e}); check that it is a readable file") from None
    except Exception as e:  # a truncated or non-pickle file: EOFError, UnpicklingError, ValueError, ...
      raise self._bad_file(path, f"cannot be read as a pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
      raise self._bad_file(path, f"holds a {type(data).__name__}, not a dict of splits")
    self.info.metadata["nonfinite_set_to_zero"] = {}
    return {split: self._generate_examples(self._prepare_split(data, split, path), orig)
            for split, orig in SPLITS.items()}

  def _bad_file(self, path, problem: str, hint: str = "") -> DatasetError:
    """The error about pickle ``path``: the problem, then how to fix it."""
    full = f"{self.name}/{self.builder_config.name}"
    return DatasetError(
        f"{path} {problem}: it is not the original MulT pickle of {full}, or it is damaged. {hint}Get "
        f"{self.file_name(self.builder_config.name)} again (yaohungt/Multimodal-Transformer), put it in the "
        f"--manual_dir folder and rerun `mmjax data build {full} --manual_dir DIR`."
    )

  def _width_hint(self, key: str, width: int) -> str:
    """Names the datasets whose ``key`` features are ``width`` wide (a pickle of another dataset)."""
    others = [c.name for c in MultimodalSentiment.__subclasses__() if c.WIDTHS.get(key) == width]
    if not others:
      return ""
    return f"{width} is the {key} width of {' and '.join(others)}: is this another dataset's file? "

  def _prepare_split(self, data: dict, split: str, path) -> dict:
    """Checks one split (``split`` is the tfds name) of the pickle: keys, shapes, a non-empty split, finite
    labels in the dataset's range; sanitises the features, finds the leading padding, converts the
    labels."""
    orig = SPLITS[split]
    where = f"split {orig!r}" + (f" (mmjax's {split!r})" if orig != split else "")
    part = data.get(orig)
    if not isinstance(part, dict):
      found = sorted(map(str, data))
      problem = (f"has no {where}" if part is None else f"has a {type(part).__name__} as {where}, not a dict")
      raise self._bad_file(path, f"{problem} (its splits: {found}; expected {sorted(SPLITS.values())})")
    missing = [k for k in (*MODALITIES, "labels") if k not in part]
    if missing:
      raise self._bad_file(path, f"lacks {missing} in {where} (its keys: {sorted(map(str, part))})")
    out, n = {}, None
    counts = self.info.metadata["nonfinite_set_to_zero"].setdefault(split, {})
    for key in MODALITIES:
      x = np.asarray(part[key])
      width = self.WIDTHS[key]
      expected = f"[{'N' if n is None else n}, T, {width}]"
      if x.ndim != 3 or (n is not None and x.shape[0] != n):
        raise self._bad_file(path, f"has {key!r} of shape {x.shape} in {where}; expected {expected}")
      if x.shape[2] != width:
        raise self._bad_file(path, f"has {key!r} features {x.shape[2]} wide in {where}; {self.name} has "
                                   f"{width} ({key!r} of shape {expected}, got {x.shape})",
                             self._width_hint(key, x.shape[2]))
      n = x.shape[0]
      out[key], count = sanitize(x)
      counts[key] = {"replaced": count, "values": int(x.size)}
      if count:
        logging.info("%s/%s %s: set %d non-finite %s values (of %d) to 0", self.name,
                     self.builder_config.name, split, count, key, x.size)
    if n == 0:
      raise self._bad_file(path, f"has no examples in {where} (its features have shape {x.shape})")
    if self.builder_config.name == "aligned":
      lengths = {k: out[k].shape[1] for k in MODALITIES}
      if len(set(lengths.values())) != 1:
        raise self._bad_file(path, f"has features of different lengths {lengths} in {where}; aligned "
                                   "features have one length")
      start = leading_padding(*(out[k] for k in MODALITIES))
      out["start"] = {k: start for k in MODALITIES}
    else:
      out["start"] = {k: leading_padding(out[k]) for k in MODALITIES}
    out["label"] = self._check_labels(np.asarray(part["labels"]), n, where, path)
    ids = part.get("id")
    if ids is not None and np.shape(ids)[:1] != (n,):
      raise self._bad_file(path, f"has 'id' of shape {np.shape(ids)} in {where}; expected [{n}, 3]")
    out["id"] = [_id_string(r) for r in ids] if ids is not None else [f"{orig}/{i}" for i in range(n)]
    out["n"] = n
    return out

  def _check_labels(self, labels: np.ndarray, n: int, where: str, path) -> np.ndarray:
    """The labels of one split as the features hold them, after checking shape, finiteness and range:
    MOSI / MOSEI sentiment in [-3, 3]; IEMOCAP a 2-way one-hot of 0 / 1 per emotion."""
    def rows(bad) -> str:
      bad = np.flatnonzero(bad)
      return f"{bad[:5].tolist()}{' ...' if len(bad) > 5 else ''} ({len(bad)} of {n})"

    expected = f"[{n}, 4, 2]" if self.CLASSIFICATION else f"[{n}, 1, 1]"
    if labels.dtype.kind not in "biuf" or (
        labels.shape != (n, len(IEMOCAP_EMOTIONS), 2) if self.CLASSIFICATION
        else labels.shape[:1] != (n,) or labels.size != n):
      raise self._bad_file(path, f"has 'labels' of shape {labels.shape} ({labels.dtype}) in {where}; "
                                 f"expected {expected}")
    flat = labels.reshape(n, -1).astype(np.float64)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
      raise self._bad_file(path, f"has NaN or infinite labels in {where}, examples {rows(bad)}")
    if self.CLASSIFICATION:
      onehot = np.isin(labels, (0, 1)).all(axis=2) & (labels.sum(axis=2) == 1)
      bad = ~onehot.all(axis=1)
      if bad.any():
        first = np.round(labels[np.flatnonzero(bad)[0]].astype(np.float64), 3).tolist()
        raise self._bad_file(path, f"has labels that are not binary flags in {where}, examples {rows(bad)} "
                                   f"(each emotion must be [1, 0] or [0, 1]; the first is {first})")
      return labels.argmax(axis=-1).astype(np.int32)
    bad = np.abs(flat[:, 0]) > SENTIMENT_RANGE + 1e-4
    if bad.any():
      lo, hi = -SENTIMENT_RANGE, SENTIMENT_RANGE
      raise self._bad_file(path, f"has sentiment labels outside [{lo:g}, {hi:g}] in {where}, examples "
                                 f"{rows(bad)} (e.g. {flat[np.flatnonzero(bad)[0], 0]:g})")
    return labels.reshape(n).astype(np.float32)

  def build_notes(self) -> list[str]:
    """Lines on how the prepared data differ from the pickle (from the info's metadata): the non-finite
    feature values set to 0, per split and feature."""
    counts = (self.info.metadata or {}).get("nonfinite_set_to_zero") or {}
    lines = [f"{split} {key}: set {c['replaced']:,} non-finite values (of {c['values']:,}) to 0"
             for split, per_key in counts.items() for key, c in per_key.items() if c["replaced"]]
    return lines or (["no non-finite feature values"] if counts else [])

  def _generate_examples(self, part: dict, orig: str):
    """Yields ``(row, example)`` pairs of one split."""
    del orig
    for i in range(part["n"]):
      example = {k: part[k][i, part["start"][k][i]:] for k in MODALITIES}
      example.update(label=part["label"][i], id=part["id"][i], index=i)
      yield i, example


class CmuMosi(MultimodalSentiment):
  """CMU-MOSI: 2,199 opinion video clips, sentiment in [-3, 3]."""

  FILE_PREFIX = "mosi"
  WIDTHS = {"text": 300, "audio": 5, "vision": 20}
  CITATION = """\
@article{zadeh2016mosi,
  title   = {Multimodal Sentiment Intensity Analysis in Videos: Facial Gestures and Verbal Messages},
  author  = {Zadeh, Amir and Zellers, Rowan and Pincus, Eli and Morency, Louis-Philippe},
  journal = {IEEE Intelligent Systems},
  year    = {2016}
}"""


class CmuMosei(MultimodalSentiment):
  """CMU-MOSEI: 22,856 opinion video segments, sentiment in [-3, 3]."""

  FILE_PREFIX = "mosei_senti"
  WIDTHS = {"text": 300, "audio": 74, "vision": 35}
  CITATION = """\
@inproceedings{zadeh2018multimodal,
  title     = {Multimodal Language Analysis in the Wild: {CMU-MOSEI} Dataset and Interpretable Dynamic
               Fusion Graph},
  author    = {Zadeh, AmirAli Bagher and Liang, Paul Pu and Poria, Soujanya and Cambria, Erik and
               Morency, Louis-Philippe},
  booktitle = {Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics},
  year      = {2018}
}"""


class Iemocap(MultimodalSentiment):
  """IEMOCAP: utterances with 4 binary emotion labels (Neutral, Happy, Sad, Angry)."""

  FILE_PREFIX = "iemocap"
  WIDTHS = {"text": 300, "audio": 74, "vision": 35}
  CLASSIFICATION = True
  CITATION = """\
@article{busso2008iemocap,
  title   = {{IEMOCAP}: Interactive Emotional Dyadic Motion Capture Database},
  author  = {Busso, Carlos and Bulut, Murtaza and Lee, Chi-Chun and Kazemzadeh, Abe and Mower, Emily and
             Kim, Samuel and Chang, Jeannette N. and Lee, Sungbok and Narayanan, Shrikanth S.},
  journal = {Language Resources and Evaluation},
  year    = {2008}
}"""
