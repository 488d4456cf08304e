"""The restricted unpickler and the MOSI / MOSEI / IEMOCAP builders on tiny pickles in the original format."""

import logging
import os
import pickle
import re
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmjax.cli import main
from mmjax.data import pipeline
from mmjax.data.builders import multimodal_sentiment as ms
from mmjax.data.safe_pickle import UnsafePickleError, load_pickle
from mmjax.errors import UserError

from .user_errors import cli_user_error, says, tree

SIZES = {"train": 6, "valid": 3, "test": 4}
T_ALIGNED = 8
T_UNALIGNED = {"text": 6, "audio": 10, "vision": 12}
DATASETS = {"cmu_mosi": ms.CmuMosi, "cmu_mosei": ms.CmuMosei, "iemocap": ms.Iemocap}


class Malicious:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


# --- a minimal Python 2 style pickler (protocol 2, py2 ``str`` for text and array buffers) ---------------


def _py2_str(b: bytes) -> bytes:
  return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)


def _py2_tuple(items) -> bytes:
  return b"(" + b"".join(_py2(x) for x in items) + b"t"


def _py2(obj) -> bytes:
  """Serialises dicts / str / bytes / ints / None / tuples / numpy arrays the way Python 2 numpy did."""
  if isinstance(obj, dict):
    return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
  if isinstance(obj, str | bytes):
    return _py2_str(obj.encode() if isinstance(obj, str) else obj)
  if isinstance(obj, bool):
    return b"\x88" if obj else b"\x89"
  if isinstance(obj, int):
    return _py2_int(obj)
  if obj is None:
    return b"N"
  if isinstance(obj, tuple):
    return _py2_tuple(obj)
  assert isinstance(obj, np.ndarray) and obj.dtype != object
  a = np.ascontiguousarray(obj)
  _, dargs, dstate = a.dtype.__reduce__()
  dtype = b"cnumpy\ndtype\n" + _py2_tuple(dargs) + b"R" + _py2_tuple(dstate) + b"b"
  state = b"(" + _py2_int(1) + _py2_tuple(a.shape) + dtype + b"\x89" + _py2_str(a.tobytes()) + b"t"
  return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_tuple((0,)) + _py2_str(b"b")
          + b"\x87R" + state + b"b")


def py2_dumps(obj) -> bytes:
  return b"\x80\x02" + _py2(obj) + b"."


# --- safe_pickle ----------------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "pwned_xyz"
  for protocol in (0, 2, 4, 5):
    with pytest.raises(pickle.UnpicklingError, match="forbidden global.*system"):
      load_pickle(pickle.dumps({"train": Malicious(marker)}, protocol=protocol))
  assert not marker.exists()
  # a latin-1-only _codecs.encode: other codecs are refused too
  with pytest.raises(pickle.UnpicklingError, match="rot13"):
    load_pickle(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "py2"])
def test_arrays_and_containers_round_trip(protocol, tmp_path):
  rng = np.random.default_rng(0)
  data = {"train": {"x": rng.normal(size=(2, 3, 4)).astype(np.float32), "i": np.arange(5),
                    "s": np.array([[b"vid", b"1"], [b"vid", b"2"]]), "d": np.array([-np.inf, 1.5])},
          "meta": (1, "a", None)}
  if protocol == "py2":
    blob = py2_dumps(data)
  else:
    data["train"]["o"] = np.array([b"x", "y", 3], dtype=object)
    data["meta"] = [1, "a", {2, 3}, np.float32(2.5)]
    blob = pickle.dumps(data, protocol=protocol)
  (tmp_path / "d.pkl").write_bytes(blob)
  for got in (load_pickle(blob), load_pickle(tmp_path / "d.pkl"), load_pickle(str(tmp_path / "d.pkl"))):
    for k, v in data["train"].items():
      assert got["train"][k].dtype == v.dtype and got["train"][k].shape == v.shape
      assert got["train"][k].tolist() == v.tolist()
    assert list(got["meta"]) == list(data["meta"])


# --- builders ----------------------------------------------------------------------------------------


def make_split(cls, n, aligned, rng, split):
  """One split in the original layout: front zero padding, -inf (and NaN) values, per-dataset widths."""
  lengths = {k: T_ALIGNED for k in ms.MODALITIES} if aligned else T_UNALIGNED
  part = {k: rng.normal(size=(n, lengths[k], cls.WIDTHS[k])).astype(np.float32) for k in ms.MODALITIES}
  shared = rng.integers(0, T_ALIGNED - 1, size=n)
  for i in range(n):
    for k in ms.MODALITIES:
      part[k][i, : shared[i] if aligned else rng.integers(0, lengths[k])] = 0.0
  if aligned:  # a real (not padding) step that is all zero in audio: must stay, to keep the alignment
    part["audio"][0, shared[0]] = 0.0
  else:  # an example whose vision is all zero keeps one step
    part["vision"][1] = 0.0
  last = lengths["audio"] - 1
  part["audio"][0, last, :2] = -np.inf
  part["audio"][2, last, 0] = -np.inf
  part["vision"][0, -1, 0] = np.nan
  if cls.CLASSIFICATION:
    flags = rng.integers(0, 2, size=(n, 4))
    part["labels"] = np.eye(2, dtype=np.float32)[flags]  # [N, 4, 2] one-hot, index 1 = present
  else:
    part["labels"] = rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32)
  if cls is ms.CmuMosi:
    part["id"] = np.array([[b"vid%d" % i, b"%d" % i, split.encode()] for i in range(n)])
  elif cls is ms.CmuMosei:
    part["id"] = np.array([[f"v{i}", "0.5", "1.5"] for i in range(n)], dtype=object)
  return part  # IEMOCAP: no ids (the original loader tolerates that)


def write_pickle(cls, config, manual_dir, seed=0):
  rng = np.random.default_rng(seed)
  aligned = config == "aligned"
  data = {s: make_split(cls, n, aligned, rng, s) for s, n in SIZES.items()}
  blob = py2_dumps(data) if cls is ms.CmuMosi and aligned else pickle.dumps(data, protocol=4)
  (manual_dir / cls.file_name(config)).write_bytes(blob)
  return data


def build(name, data_dir, manual_dir):
  builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """All six dataset/configs prepared once: ``{name: (source data, data_dir)}``."""
  manual = tmp_path_factory.mktemp("manual")
  data_dir = tmp_path_factory.mktemp("tfds_ms")
  out = {}
  for ds, cls in DATASETS.items():
    for config in ("aligned", "unaligned"):
      data = write_pickle(cls, config, manual)
      build(f"{ds}/{config}", data_dir, manual)
      out[f"{ds}/{config}"] = data
  return out, str(data_dir)


def sanitized(x):
  return np.where(np.isfinite(x), x, 0).astype(np.float32)


@pytest.mark.parametrize("name", [f"{d}/{c}" for d in DATASETS for c in ("aligned", "unaligned")])
def test_builder_examples(built, name):
  source, data_dir = built
  data = source[name]
  cls = DATASETS[name.split("/")[0]]
  aligned = name.endswith("/aligned")
  builder = tfds.builder(name, data_dir=data_dir)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": 6, "validation": 3, "test": 4}
  stripped = 0
  for split, orig in ms.SPLITS.items():
    src = builder.as_data_source(split=split)
    rows = sorted((src[j] for j in range(len(src))), key=lambda e: e["index"])
    assert [e["index"] for e in rows] == list(range(SIZES[orig]))
    for i, ex in enumerate(rows):
      for k in ms.MODALITIES:
        full = sanitized(data[orig][k][i])
        x = ex[k]
        assert x.dtype == np.float32 and x.shape[1] == cls.WIDTHS[k] and np.all(np.isfinite(x))
        pad = full.shape[0] - x.shape[0]
        stripped += pad
        assert x.shape[0] >= 1 and not np.any(full[:pad])  # only all-zero leading steps were removed
        np.testing.assert_array_equal(x, full[pad:])
        if not aligned:  # each modality starts at its first non-zero step (or keeps its last one)
          assert np.any(x[0]) or x.shape[0] == 1
      if aligned:
        assert ex["text"].shape[0] == ex["audio"].shape[0] == ex["vision"].shape[0]
        assert any(np.any(ex[k][0]) for k in ms.MODALITIES)
      if cls.CLASSIFICATION:
        assert ex["label"].dtype == np.int32
        assert ex["label"].tolist() == data[orig]["labels"][i].argmax(-1).tolist()
      else:
        assert np.float32(ex["label"]) == data[orig]["labels"][i, 0, 0]
      ident = ex["id"].decode() if isinstance(ex["id"], bytes) else ex["id"]
      expected = {ms.CmuMosi: f"vid{i}|{i}|{orig}", ms.CmuMosei: f"v{i}|0.5|1.5", ms.Iemocap: f"{orig}/{i}"}
      assert ident == expected[cls]
  assert stripped > 0
  if aligned:  # the all-zero real audio step of train example 0 was kept (text/vision are not zero there)
    ex0 = next(e for e in (builder.as_data_source("train")[j] for j in range(6)) if e["index"] == 0)
    assert not np.any(ex0["audio"][0]) and np.any(ex0["text"][0])
  else:  # train example 1 has an all-zero vision: one step kept
    ex1 = next(e for e in (builder.as_data_source("train")[j] for j in range(6)) if e["index"] == 1)
    assert ex1["vision"].shape == (1, cls.WIDTHS["vision"])


def test_missing_file_bad_shape_and_malicious_pickle(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(pipeline.DatasetError, match=r"mosei_senti_data_noalign\.pkl.*manual.*--manual_dir"):
    build("cmu_mosei/unaligned", tmp_path / "d1", manual)  # empty manual dir
  write_pickle(ms.CmuMosei, "aligned", manual)
  with pytest.raises(pipeline.DatasetError, match=r"mosei_senti_data_noalign\.pkl"):
    build("cmu_mosei/unaligned", tmp_path / "d1", manual)  # only the other config's file

  data = write_pickle(ms.CmuMosi, "unaligned", manual)
  data["valid"]["audio"] = data["valid"]["audio"][..., :4]
  (manual / "mosi_data_noalign.pkl").write_bytes(pickle.dumps(data))
  with pytest.raises(pipeline.DatasetError, match=r"'audio' features 4 wide in split 'valid'.*\[3, T, 5\]"):
    build("cmu_mosi/unaligned", tmp_path / "d2", manual)

  marker = tmp_path / "pwned_xyz"
  (manual / "iemocap_data.pkl").write_bytes(pickle.dumps({"train": Malicious(marker)}))
  with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
    build("iemocap/aligned", tmp_path / "d3", manual)
  assert not marker.exists()


def data_cfg(data_dir, name, max_lengths):
  return ml_collections.ConfigDict({
      "name": name, "data_dir": data_dir, "train_split": "train", "max_lengths": max_lengths,
      "truncate": False, "prepare": False, "num_threads": 1,
  })


def test_pipeline_reads_the_builders(built):
  _, data_dir = built
  cfg = data_cfg(data_dir, "cmu_mosei/unaligned", dict(T_UNALIGNED))
  b = next(pipeline.train_batches(cfg, global_batch_size=4, seed=0))
  for k in ms.MODALITIES:
    assert b[k].shape == (4, T_UNALIGNED[k], ms.CmuMosei.WIDTHS[k]) and b[k].dtype == np.float32
    n = b[f"{k}_mask"].sum(1)
    assert np.all(n >= 1) and all(not np.any(x[m:]) for x, m in zip(b[k], n, strict=True))
  assert b["label"].shape == (4,) and b["label"].dtype == np.float32 and "id" not in b

  cfg = data_cfg(data_dir, "iemocap/aligned", {k: T_ALIGNED for k in ms.MODALITIES})
  batches = list(pipeline.eval_batches(cfg, "validation", global_batch_size=2))
  assert len(batches) == 2 and batches[1]["_valid"].tolist() == [1, 0]
  assert batches[0]["label"].shape == (2, 4) and batches[0]["label"].dtype == np.int32
  np.testing.assert_array_equal(batches[0]["text_mask"], batches[0]["audio_mask"])


def test_pipeline_prepare_with_manual_dir_logs_replacements(tmp_path, caplog):
  manual = tmp_path / "manual"
  manual.mkdir()
  cfg = data_cfg(str(tmp_path / "d"), "cmu_mosi/aligned", {k: T_ALIGNED for k in ms.MODALITIES})
  with pytest.raises(pipeline.DatasetError, match="--manual_dir"):
    pipeline.open_split(cfg, "train")
  write_pickle(ms.CmuMosi, "aligned", manual)
  with caplog.at_level(logging.INFO, logger="absl"):  # the builders log through absl
    builder = pipeline.prepare("cmu_mosi/aligned", str(tmp_path / "d"), manual_dir=str(manual))
  assert builder.info.splits["validation"].num_examples == 3
  assert "set 3 non-finite audio values" in caplog.text  # train: 2 + 1 -inf
  assert len(pipeline.open_split(cfg, "test")) == 4


def test_mfm_mosi_config_trains_on_the_builder(built, tmp_path):
  """configs/mfm_mosi.py end to end on the fixture pickles: L1 sentiment from the shared factor, MMD prior
  matching, the MOSI metrics over whole splits."""
  import jax

  from mmjax.config import get_config
  from mmjax.train import train_and_evaluate

  from .conftest import CONFIGS

  _, data_dir = built
  cfg = get_config(str(CONFIGS / "mfm_mosi.py"), [
      f"data.data_dir={data_dir}", "data.max_lengths.text=4", "data.max_lengths.audio=4",
      "data.max_lengths.vision=4", "batch_size=2", "eval_batch_size=2", "num_steps=3", "eval_every=0",
      "checkpoint_every=0", "async_checkpoints=false", "progress=false", "model.kwargs.width=16",
      "model.kwargs.factor_dim=8"])
  assert cfg.batch_size == 2 and cfg.model.kwargs.num_classes == 1 and cfg.data.truncate
  final = train_and_evaluate(cfg, tmp_path, devices=jax.devices()[:1], echo=lambda *a: None)
  test = final["test"]
  assert test["count"] == SIZES["test"]
  for key in ("mae", "corr", "acc2", "f1", "acc7", "mmd", "recon_error/text", "recon_error/vision"):
    assert key in test and np.isfinite(test[key]), key
  # The task's L1 term over the split equals the MAE of the split-level metrics.
  np.testing.assert_allclose(test["label_loss"], test["mae"], rtol=1e-5)


# --- user errors: bad pickles are refused at build time, through the CLI, leaving the data dir as it was ---


def _set(part, key, index, value):
  part[key][index] = value


BAD_PICKLES = {  # dataset/config, change to the source splits, what the message says
    "missing_split": ("cmu_mosei/aligned", lambda d: d.pop("valid"),
                      r"has no split 'valid' \(mmjax's 'validation'\) \(its splits: \['test', 'train'\]"),
    "feature_width": ("cmu_mosi/unaligned",
                      lambda d: d["test"].update(vision=np.ones((SIZES["test"], 12, 35), np.float32)),
                      r"'vision' features 35 wide in split 'test'; cmu_mosi has 20 .*"
                      r"35 is the vision width of cmu_mosei and iemocap"),
    "empty_split": ("iemocap/unaligned", lambda d: d.update(test={k: v[:0] for k, v in d["test"].items()}),
                    r"has no examples in split 'test'"),
    "nan_label": ("cmu_mosei/unaligned", lambda d: _set(d["train"], "labels", (4, 0, 0), np.nan),
                  r"has NaN or infinite labels in split 'train', examples \[4\] \(1 of 6\)"),
    "label_range": ("cmu_mosi/aligned", lambda d: _set(d["valid"], "labels", (1, 0, 0), -3.5),
                    r"sentiment labels outside \[-3, 3\] in split 'valid' .*examples \[1\] .*-3\.5"),
    "iemocap_flags": ("iemocap/aligned", lambda d: _set(d["train"], "labels", (2, 1), [1.0, 1.0]),
                      r"labels that are not binary flags in split 'train', examples \[2\]"),
}


def write_bad_pickle(name, change, manual):
  """The fixture pickle of ``name`` with ``change`` applied to its splits; returns its path."""
  ds, config = name.split("/")
  cls = DATASETS[ds]
  rng = np.random.default_rng(0)
  data = {s: make_split(cls, n, config == "aligned", rng, s) for s, n in SIZES.items()}
  change(data)
  path = manual / cls.file_name(config)
  path.write_bytes(pickle.dumps(data, protocol=4))
  return path


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_bad_pickle_is_a_user_error_naming_file_split_and_fix(case, tmp_path, capsys):
  name, change, expected = BAD_PICKLES[case]
  manual = tmp_path / "manual"
  manual.mkdir()
  path = write_bad_pickle(name, change, manual)
  fix = f"put it in the --manual_dir folder and rerun `mmjax data build {name} --manual_dir DIR`"
  # a fresh data dir: nothing is created
  fresh = tmp_path / "fresh"
  msg = cli_user_error(capsys, "data", "build", name, "--data_dir", fresh, "--manual_dir", manual)
  assert re.search(expected, msg) and says(msg, f"{path} ") and fix in msg, msg
  assert not fresh.exists()
  # a data dir where the dataset's other config is prepared: every file stays byte-identical
  other = name.split("/")[0] + ("/unaligned" if name.endswith("/aligned") else "/aligned")
  used = tmp_path / "used"
  write_pickle(DATASETS[name.split("/")[0]], other.split("/")[1], manual)
  build(other, used, manual)
  before = tree(used)
  assert cli_user_error(capsys, "data", "build", name, "--data_dir", used, "--manual_dir", manual) == msg
  assert tree(used) == before


def test_overwrite_that_fails_keeps_the_prepared_version(tmp_path, capsys):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_pickle(ms.CmuMosi, "unaligned", manual)
  build("cmu_mosi/unaligned", tmp_path / "d", manual)
  before = tree(tmp_path / "d")
  write_bad_pickle("cmu_mosi/unaligned", BAD_PICKLES["nan_label"][1], manual)
  msg = cli_user_error(capsys, "data", "build", "cmu_mosi/unaligned", "--data_dir", tmp_path / "d",
                       "--manual_dir", manual, "--overwrite")
  assert "NaN or infinite labels in split 'train'" in msg
  assert tree(tmp_path / "d") == before
  assert len(tfds.builder("cmu_mosi/unaligned", data_dir=str(tmp_path / "d")).as_data_source("test")) == 4


def test_malicious_pickle_through_the_cli(tmp_path, capsys):
  manual = tmp_path / "manual"
  manual.mkdir()
  marker = tmp_path / "pwned_xyz"
  path = manual / "iemocap_data.pkl"
  path.write_bytes(pickle.dumps({"train": Malicious(marker)}))
  with pytest.raises(UnsafePickleError) as info:
    load_pickle(path)
  assert isinstance(info.value, UserError) and isinstance(info.value, pickle.UnpicklingError)
  assert str(path) in str(info.value)
  msg = cli_user_error(capsys, "data", "build", "iemocap/aligned", "--data_dir", tmp_path / "d",
                       "--manual_dir", manual)
  assert says(msg, f"mmjax: error: {path}: forbidden global in pickle:")
  assert re.search(r"forbidden global in pickle: \w+\.system\. .*nothing in the file was run.*get the file "
                   r"again", msg), msg
  assert not marker.exists() and not (tmp_path / "d").exists()


def test_build_prints_and_keeps_the_nonfinite_counts(tmp_path, capsys):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_pickle(ms.CmuMosi, "aligned", manual)
  args = ["data", "build", "cmu_mosi/aligned", "--data_dir", str(tmp_path / "d"), "--manual_dir", str(manual)]
  for _ in range(2):  # built, then already prepared: the counts come from the prepared metadata
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    for split, orig in ms.SPLITS.items():
      n = SIZES[orig] * T_ALIGNED
      assert f"mmjax: cmu_mosi/aligned {split} audio: set 3 non-finite values (of {n * 5:,}) to 0\n" in out
      assert f"mmjax: cmu_mosi/aligned {split} vision: set 1 non-finite values (of {n * 20:,}) to 0\n" in out
      assert f"{split} text" not in out
  info = tfds.builder("cmu_mosi/aligned", data_dir=str(tmp_path / "d")).info
  counts = info.metadata["nonfinite_set_to_zero"]
  assert counts["train"] == {"text": {"replaced": 0, "values": 6 * 8 * 300},
                             "audio": {"replaced": 3, "values": 6 * 8 * 5},
                             "vision": {"replaced": 1, "values": 6 * 8 * 20}}
