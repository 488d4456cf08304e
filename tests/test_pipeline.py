"""The grain input pipeline over the digits_av TFDS source."""

import itertools
import re
import shutil
import socket
import time

import ml_collections
import numpy as np
import pytest

from mmjax.data import pipeline

from .user_errors import cli_user_error, says, tree


def data_cfg(data_dir, **over):
  c = ml_collections.ConfigDict({
      "name": "digits_av", "data_dir": data_dir, "train_split": "train", "max_lengths": {"audio": 80,
                                                                                          "text": 20},
      "truncate": False, "prepare": False, "num_threads": 1,
  })
  for k, v in over.items():
    setattr(c, k, v)
  return c


def take(it, n):
  return list(itertools.islice(it, n))


def test_batches_have_static_padded_shapes_and_masks(data_dir):
  (b,) = take(pipeline.train_batches(data_cfg(data_dir), global_batch_size=4, seed=0), 1)
  assert b["audio"].shape == (4, 80, 40) and b["audio"].dtype == np.float32
  assert b["audio_mask"].shape == (4, 80) and b["audio_mask"].dtype == bool
  assert b["text"].shape == (4, 20) and b["text"].dtype == np.int32
  assert b["image"].shape == (4, 8, 8) and 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  assert b["label"].shape == (4,) and b["_valid"].tolist() == [1, 1, 1, 1]
  # masks are a prefix of True, and padding is zero
  for mask, audio in zip(b["audio_mask"], b["audio"], strict=True):
    n = mask.sum()
    assert 30 <= n <= 79 and mask[:n].all() and not mask[n:].any()
    assert np.all(audio[n:] == 0)


def test_deterministic_given_seed_and_different_across_seeds(data_dir):
  cfg = data_cfg(data_dir)
  a = take(pipeline.train_batches(cfg, global_batch_size=8, seed=3), 3)
  b = take(pipeline.train_batches(cfg, global_batch_size=8, seed=3), 3)
  c = take(pipeline.train_batches(cfg, global_batch_size=8, seed=4), 3)
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["id"], c[0]["id"])


def test_resume_from_step_continues_the_same_stream(data_dir):
  cfg = data_cfg(data_dir)
  full = take(pipeline.train_batches(cfg, global_batch_size=8, seed=1), 5)
  resumed = take(pipeline.train_batches(cfg, global_batch_size=8, seed=1, start_step=3), 2)
  for x, y in zip(full[3:], resumed, strict=True):
    np.testing.assert_array_equal(x["id"], y["id"])
    np.testing.assert_array_equal(x["audio"], y["audio"])


def test_epochs_cover_the_split_and_reshuffle(data_dir):
  cfg = data_cfg(data_dir)
  n = 1259  # digits_av train examples
  batches = take(pipeline.train_batches(cfg, global_batch_size=1259, seed=0), 2)
  first, second = batches[0]["id"], batches[1]["id"]
  assert len(set(first.tolist())) == n and set(first.tolist()) == set(second.tolist())
  assert not np.array_equal(first, second)


def test_processes_read_disjoint_halves(data_dir):
  cfg = data_cfg(data_dir)
  seen = []
  for i in range(2):
    ids = np.concatenate([b["id"] for b in take(pipeline.train_batches(
        cfg, global_batch_size=20, seed=0, process_index=i, process_count=2), 60)])
    assert len(ids) == 600
    seen.append(set(ids.tolist()))
  assert not seen[0] & seen[1]


def test_eval_batches_count_every_example_once(data_dir):
  cfg = data_cfg(data_dir)
  batches = list(pipeline.eval_batches(cfg, "validation", global_batch_size=64))
  assert len(batches) == 3  # 179 examples
  valid = np.concatenate([b["_valid"] for b in batches])
  ids = np.concatenate([b["id"] for b in batches])[valid > 0]
  assert valid.sum() == 179 and len(set(ids.tolist())) == 179
  # two processes: same number of batches each, together every example once
  parts = [list(pipeline.eval_batches(cfg, "validation", global_batch_size=64, process_index=i,
                                      process_count=2)) for i in range(2)]
  assert len(parts[0]) == len(parts[1])
  ids = [int(i) for p in parts for b in p for i, v in zip(b["id"], b["_valid"], strict=True) if v]
  assert sorted(ids) == sorted(set(ids)) and len(ids) == 179


def test_too_long_sequences_error_or_truncate(data_dir):
  short = data_cfg(data_dir, max_lengths={"audio": 20, "text": 20})
  with pytest.raises(pipeline.DatasetError, match="max_lengths.audio is 20"):
    take(pipeline.train_batches(short, global_batch_size=4, seed=0), 1)
  short.truncate = True
  (b,) = take(pipeline.train_batches(short, global_batch_size=4, seed=0), 1)
  assert b["audio"].shape == (4, 20, 40) and b["audio_mask"].all()


def test_missing_max_length_is_a_clear_error(data_dir):
  with pytest.raises(pipeline.DatasetError, match="variable-length features \\['audio'\\]"):
    pipeline.open_split(data_cfg(data_dir, max_lengths={"text": 20}), "train")
  with pytest.raises(pipeline.DatasetError, match="does not have"):
    pipeline.open_split(data_cfg(data_dir, max_lengths={"audio": 80, "text": 20, "video": 3}), "train")


def test_unknown_or_unprepared_dataset_is_a_clear_error(data_dir, tmp_path):
  with pytest.raises(pipeline.DatasetError, match="unknown dataset 'no_such_data'"):
    pipeline.open_split(data_cfg(data_dir, name="no_such_data"), "train")
  with pytest.raises(pipeline.DatasetError, match="not prepared.*mmjax data build digits_av"):
    pipeline.open_split(data_cfg(str(tmp_path)), "train")
  with pytest.raises(pipeline.DatasetError, match="no split 'dev'"):
    pipeline.open_split(data_cfg(data_dir), "dev")


# --- damaged prepared files, datasets that need a download: user errors that leave the data dir alone ---

TRAIN_FILE = "digits_av/1.0.0/digits_av-train.array_record-00000-of-00001"


def damage(path, kind):
  """Truncates ``path`` to half, or overwrites 64 KiB in its middle with random bytes."""
  size = path.stat().st_size
  with open(path, "r+b") as f:
    if kind == "truncated":
      f.truncate(size // 2)
    else:
      f.seek(size // 2)
      f.write(np.random.default_rng(0).bytes(1 << 16))


@pytest.fixture
def damaged(data_dir, tmp_path):
  """Factory: a copy of the session's data dir whose digits_av train file is damaged; ``(dir, file)``."""
  def make(kind):
    copy = tmp_path / "tfds"
    shutil.copytree(data_dir, copy)
    damage(copy / TRAIN_FILE, kind)
    return copy, copy / TRAIN_FILE

  return make


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_damaged_array_record_is_a_dataset_error(kind, damaged):
  copy, path = damaged(kind)
  cfg = data_cfg(str(copy))
  expected = (rf"cannot read {re.escape(str(path))}: the file is damaged, truncated or missing \(.+\)\. "
              rf"Rebuild it: `mmjax data build digits_av --data_dir {re.escape(str(copy))} --overwrite`")
  if kind == "truncated":  # found when the split is opened (the first example of each file is read)
    with pytest.raises(pipeline.DatasetError, match=expected):
      pipeline.open_split(cfg, "train")
  with pytest.raises(pipeline.DatasetError, match=expected):  # garbage: found reading inside grain
    take(pipeline.train_batches(cfg, global_batch_size=32, seed=0), 80)  # 2 epochs
  with pytest.raises(pipeline.DatasetError, match=expected):
    list(pipeline.eval_batches(cfg, "train", global_batch_size=64))
  assert len(pipeline.open_split(cfg, "validation")) == 179  # other splits still read


def test_damaged_array_record_through_the_cli_then_overwrite(damaged, tmp_path, capsys):
  from mmjax.cli import main

  from .conftest import CONFIGS

  copy, path = damaged("truncated")
  before = tree(copy)
  workdir = tmp_path / "w"
  msg = cli_user_error(capsys, "train", "--config", f"{CONFIGS / 'late_fusion_digits.py'}:runlocal",
                       "--workdir", workdir, f"--config.data.data_dir={copy}")
  assert says(msg, f"cannot read {path}: the file is damaged")
  assert says(msg, f"`mmjax data build digits_av --data_dir {copy} --overwrite`")
  assert not workdir.exists() and tree(copy) == before
  msg = cli_user_error(capsys, "data", "build", "digits_av", "--data_dir", copy)  # prepared, but damaged
  assert says(msg, f"cannot read {path}") and "--overwrite`" in msg
  assert tree(copy) == before
  assert main(["data", "build", "digits_av", "--data_dir", str(copy), "--overwrite"]) == 0
  assert "'train': 1259" in capsys.readouterr().out
  source = pipeline.open_split(data_cfg(str(copy)), "train")
  assert len({int(source[i]["id"]) for i in range(len(source))}) == 1259
  assert sorted(p.name for p in (copy / "digits_av").iterdir()) == ["1.0.0"]  # the old version is gone


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to resolve a host name or connect a socket fails at once and is recorded."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access in a test")

  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)
  return attempts


def test_dataset_that_needs_a_download_fails_at_once(no_network, tmp_path, capsys):
  start = time.monotonic()
  for extra in ((), ("--overwrite",)):
    msg = cli_user_error(capsys, "data", "build", "mnist", "--data_dir", tmp_path / "d", *extra)
    assert "dataset 'mnist' needs a download, which mmjax does not do" in msg
    assert "`tfds build mnist --file_format=array_record`" in msg
    target = tmp_path / "d" / "mnist" / "3.0.1"
    assert says(msg, f"copy the folder it writes there, <data dir>/mnist/3.0.1, to {target}.")
    assert "`mmjax data list`" in msg
  with pytest.raises(pipeline.DatasetError, match="'mnist' needs a download"):
    pipeline.open_split(data_cfg(str(tmp_path / "d"), name="mnist", max_lengths={}), "train")
  assert time.monotonic() - start < 30
  assert no_network == [] and not (tmp_path / "d").exists()
