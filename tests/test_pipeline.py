"""The grain input pipeline over the digits_av TFDS source."""

import itertools

import ml_collections
import numpy as np
import pytest

from mmjax.data import pipeline


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
