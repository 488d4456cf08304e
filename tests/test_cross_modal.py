"""The cross_modal evaluator: coherence scored by a trained unimodal classifier, PNG grids, `mmjax sample`."""

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import evaluators
from mmjax.config import apply_override
from mmjax.data import pipeline
from mmjax.errors import ConfigError
from mmjax.evaluators import cross_modal
from mmjax.train import build_run, evaluate_checkpoint, restore_run, train_and_evaluate

QUIET = dict(devices=jax.devices()[:1], echo=lambda *a: None)
NO_CKPT = ["checkpoint_every=0", "eval_every=0", "async_checkpoints=false"]


def test_parse_pairs():
  assert cross_modal.parse_pairs("audio->image, text->image") == [("audio", "image"), ("text", "image")]
  assert cross_modal.parse_pairs("") == []
  for bad in ("audio", "audio->", "->image", "image->image", "audio=>image"):
    with pytest.raises(ConfigError, match="SOURCE->TARGET"):
      cross_modal.parse_pairs(bad)


def test_tiles_and_png(tmp_path):
  image = np.linspace(-0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)
  t, scale = cross_modal.tile(image, "image")
  assert t.shape == (8, 8) and t.min() == 0.0 and t.max() == 1.0 and scale == (0.0, 1.0)
  seq = np.arange(30, dtype=np.float32).reshape(10, 3)
  t, scale = cross_modal.tile(seq, "sequence", np.arange(10) < 4)
  assert t.shape == (3, 4) and scale == (0.0, 11.0)  # cut to 4 valid steps, features up
  np.testing.assert_allclose(t[-1], np.array([0, 3, 6, 9]) / 11.0)
  t2, _ = cross_modal.tile(seq * 2, "sequence", np.arange(10) < 4, scale)  # the real tile's scale
  np.testing.assert_allclose(t2[-1], np.minimum(np.array([0, 6, 12, 18]) / 11.0, 1.0))
  with pytest.raises(ValueError, match="can only draw"):
    cross_modal.tile(np.zeros((2, 2, 2)), "image")
  path = tmp_path / "grid.png"
  rows = [[np.ones((8, 8))] * 3, [np.zeros((3, 40))] * 3]  # 8x8 enlarged x4; 3x40 enlarged x11
  cross_modal.write_png(rows, path, gap=2)
  png = np.asarray(Image.open(path))
  assert png.dtype == np.uint8 and png.shape == (2 + 32 + 2 + 33 + 2, 2 + 3 * (440 + 2))
  assert png[2:34, 2:34].min() == 255 and png[36:69, 2:442].max() == 0


def test_grid_examples_are_sorted_and_balanced(tiny_config):
  cfg = tiny_config("mfm_digits")
  batch = cross_modal.grid_examples(cfg.data, "validation", per_class=2)
  np.testing.assert_array_equal(batch["label"], np.repeat(np.arange(10), 2))
  assert batch["image"].shape == (20, 8, 8) and batch["audio_mask"].shape == (20, 80)
  with pytest.raises(ConfigError, match="grid_per_class"):
    cross_modal.grid_examples(cfg.data, "validation", per_class=0)


@pytest.fixture(scope="module")
def image_classifier(tmp_path_factory, data_dir):
  """A tiny image-only classifier trained for a few steps (its accuracy only needs to be reproducible)."""
  from mmjax.config import get_config

  from .conftest import CONFIGS

  workdir = tmp_path_factory.mktemp("classifier_image")
  cfg = get_config(f"{CONFIGS / 'late_fusion_digits.py'}:image,runlocal",
                   [f"data.data_dir={data_dir}", "checkpoint_every=0", "async_checkpoints=false"])
  train_and_evaluate(cfg, workdir, **QUIET)
  return workdir


def coherence_overrides(classifier, pairs="audio->image,text->image"):
  return [f"evaluators.coherence.kwargs.pairs={pairs}", f"evaluators.test_coherence.kwargs.pairs={pairs}",
          f"evaluators.coherence.kwargs.classifiers.image={classifier}",
          f"evaluators.test_coherence.kwargs.classifiers.image={classifier}"]


def with_test_coherence(cfg):
  """runlocal drops the test-split evaluator; put it back."""
  cfg.evaluators.test_coherence = {"name": "cross_modal", "every": 0,
                                   "kwargs": {"split": "test", "pairs": "", "classifiers": {}}}
  return cfg


@pytest.fixture(scope="module")
def mfm_run(tmp_path_factory, data_dir, image_classifier):
  """A tiny MFM trained through the engine with both coherence evaluators: ``(config, workdir, final)``."""
  from mmjax.config import get_config

  from .conftest import CONFIGS

  workdir = tmp_path_factory.mktemp("mfm")
  cfg = get_config(f"{CONFIGS / 'mfm_digits.py'}:runlocal", [f"data.data_dir={data_dir}", *NO_CKPT])
  cfg = with_test_coherence(cfg)
  for override in coherence_overrides(image_classifier):
    apply_override(cfg, override)
  return cfg, workdir, train_and_evaluate(cfg, workdir, **QUIET)


def test_coherence_and_grids_through_the_engine(tiny_config, image_classifier, mfm_run):
  cfg, tmp_path, final = mfm_run
  test = final["test_coherence"]
  for key in ("audio->image", "text->image", "classifier/image"):
    assert 0.0 <= test[key] <= 1.0, key
  # classifier/image is the classifier's own accuracy on the real test images.
  own = evaluate_checkpoint(tiny_config("late_fusion_digits", "image,runlocal"), image_classifier, "test")
  np.testing.assert_allclose(test["classifier/image"], own["test"]["accuracy"], atol=1e-6)

  # Coherence recomputed by hand over the validation split: classify images generated from speech.
  run, state = restore_run(tmp_path, config=cfg, devices=jax.devices()[:1])
  ev = evaluators.get("cross_modal")(run, **cfg.evaluators.coherence.kwargs.to_dict())
  clf = ev.classifiers["image"]
  @jax.jit
  def predict(params, clf_params, batch):
    _, recon = run.model.apply({"params": params}, batch, ("audio",), method="predict_missing")
    return jax.numpy.argmax(clf.logits(clf_params, recon["image"]), -1)

  hits = []
  for batch in pipeline.eval_batches(cfg.data, "validation", global_batch_size=64):
    pred = np.asarray(predict(state.params, clf.params, batch))
    hits += list((pred == batch["label"])[batch["_valid"] > 0])
  assert len(hits) == 179
  np.testing.assert_allclose(final["coherence"]["audio->image"], np.mean(hits), atol=1e-6)

  # A grid at every evaluation (steps 4 and 6): rows real speech, real image, generated image; 20 columns.
  grids = sorted((tmp_path / "samples").glob("audio-to-image-step*.png"))
  assert [g.name for g in grids] == ["audio-to-image-step000004.png", "audio-to-image-step000006.png"]
  png = np.asarray(Image.open(grids[-1]))
  assert png.shape[0] == 2 + 40 + 2 + 32 + 2 + 32 + 2
  rows, labels = ev.grid(state.params, "validation")
  assert len(rows) == 3 and all(len(r) == 20 for r in rows)
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 2))


def test_sample_command_writes_a_grid(mfm_run, tmp_path):
  from mmjax.cli import main

  cfg, workdir, _ = mfm_run
  out = tmp_path / "speech_to_image.png"
  assert main(["sample", "--config", "configs/mfm_digits.py:runlocal", "--workdir", str(workdir),
               "--from", "audio", "--to", "image", "--per_class", "1", "--out", str(out),
               f"--config.data.data_dir={cfg.data.data_dir}"]) == 0
  png = np.asarray(Image.open(out))
  # One column per digit, as wide as its speech (cut to its length) or the 32-pixel image, if wider.
  lengths = cross_modal.grid_examples(cfg.data, "test", per_class=1)["audio_mask"].sum(1)
  assert png.shape == (2 + 40 + 2 + 32 + 2 + 32 + 2, 2 + sum(max(n, 32) + 2 for n in lengths))
  # Token modalities cannot be drawn; unknown modalities are named.
  assert main(["sample", "--config", "configs/mfm_digits.py:runlocal", "--workdir", str(workdir),
               "--from", "audio", "--to", "text", f"--config.data.data_dir={cfg.data.data_dir}"]) == 2
  assert main(["sample", "--config", "configs/mfm_digits.py:runlocal", "--workdir", str(workdir),
               "--from", "depth", "--to", "image", f"--config.data.data_dir={cfg.data.data_dir}"]) == 2


def test_bad_cross_modal_configs_are_clear_errors(tiny_config, tmp_path, image_classifier):
  def build(name="mfm_digits", **kwargs):
    run = build_run(tiny_config(name), tmp_path / "x", jax.devices()[:1])
    return evaluators.get("cross_modal")(run, **kwargs)

  with pytest.raises(ConfigError, match="no trained image classifier.*late_fusion_digits.py:image"):
    build(pairs="audio->image", classifiers={"image": str(tmp_path / "none")})
  with pytest.raises(ConfigError, match="classifiers.image"):
    build(pairs="audio->image", classifiers={})
  with pytest.raises(ConfigError, match="reads modalities"):
    build(pairs="image->audio", classifiers={"audio": str(image_classifier)})
  with pytest.raises(ConfigError, match="no modality 'depth'"):
    build(grid="depth->image")
  with pytest.raises(ConfigError, match="cannot generate"):
    build("late_fusion_digits", grid="audio->image")
