"""CLIP / SigLIP (mmjax.models.clip), the contrastive task and the zero_shot evaluator.

Known answers for the losses against a direct numpy transcription of the papers' formulas; the global-batch
loss and gradients on an 8-device mesh (the engine's jit with NamedSharding) against one device; SigLIP's
chunked ring (shard_map + ppermute) against the dense form, and that it never forms the B x B logits;
``data.keep_labels``; the zero-shot / retrieval / probe helpers; an end-to-end run (slow)."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import models, tasks
from mmjax.evaluators import zero_shot
from mmjax.layers import axes
from mmjax.models.clip import last_valid, patchify
from mmjax.tasks.contrastive import clip_loss, sigmoid_loss, sigmoid_loss_chunked
from mmjax.train.run import run_params as load_run_params

VOCAB = 45


def _unit(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _pairs(b=16, d=8, seed=0):
  k = jax.random.PRNGKey(seed)
  return _unit(k, (b, d)), _unit(jax.random.fold_in(k, 1), (b, d))


def _mesh(shape=(8, 1, 1)):
  return Mesh(np.array(jax.devices()[:math.prod(shape)]).reshape(shape), ("data", "fsdp", "tensor"))


def test_patchify_and_last_valid_known_answer():
  img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
  p = np.asarray(patchify(img, 2))
  assert p.shape == (1, 4, 4)
  np.testing.assert_array_equal(p[0, 0], [0, 1, 4, 5])  # top-left patch, row-major inside
  np.testing.assert_array_equal(p[0, 1], [2, 3, 6, 7])
  np.testing.assert_array_equal(p[0, 3], [10, 11, 14, 15])
  h = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
  mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
  np.testing.assert_array_equal(np.asarray(last_valid(h, mask))[:, 0], [1, 5])
  with pytest.raises(ValueError, match="patch_size"):
    patchify(np.zeros((1, 5, 4), np.float32), 2)
  rgb = np.stack([img, 100 + img, 200 + img], axis=-1)  # [1, 4, 4, 3]: channels innermost in a patch
  np.testing.assert_array_equal(np.asarray(patchify(rgb, 2))[0, 1], [2, 102, 202, 3, 103, 203, 6, 106, 206,
                                                                    7, 107, 207])


def test_clip_coco_recipe_trains_on_image_captions(tmp_path):
  """configs/clip_coco.py (the README's real-data recipe) end to end at runlocal size: RGB 224 x 224
  images from a manual image_captions directory, captions tokenized with a GPT-2 BPE, a text tower of its
  own width."""
  from mmjax.config import get_config
  from mmjax.train import train_and_evaluate

  from .conftest import CONFIGS
  from .test_captions import build, write_images, write_jsonl

  hf = Path(__file__).parent / "fixtures" / "gpt2_tiny"
  manual = tmp_path / "manual"
  names = write_images(manual / "images")
  write_jsonl(manual, [{"image": names[i % 4], "caption": f"picture {i}", "split": split}
                       for i, split in enumerate(["train"] * 8 + ["validation"] * 4 + ["test"] * 4)])
  build(manual, tmp_path / "tfds", config="s224")
  cfg = get_config(f"{CONFIGS / 'clip_coco.py'}:{hf},runlocal",
                   [f"data.data_dir={tmp_path / 'tfds'}", "async_checkpoints=false",
                    "model.kwargs.text_width=8"])
  final = train_and_evaluate(cfg, tmp_path / "run", devices=jax.devices()[:1], echo=lambda *a: None)
  assert np.isfinite(final["test"]["loss"]) and final["test"]["count"] == 4
  params = load_run_params(tmp_path / "run")
  assert params["image_tower"]["embed"]["proj"]["kernel"].shape == (56 * 56 * 3, 16)  # RGB 56 x 56 patches
  assert params["text_tower"]["embed"]["tokens"]["embedding"].shape[1] == 8  # the text tower's own width


def test_losses_match_the_papers_formulas():
  x, y = map(np.asarray, _pairs(6, 4))
  s, b = 7.0, -3.0
  logits = s * x @ y.T
  lse = lambda a, axis: np.log(np.exp(a).sum(axis))  # noqa: E731
  want_clip = np.mean(0.5 * ((lse(logits, 1) - np.diag(logits)) + (lse(logits, 0) - np.diag(logits))))
  np.testing.assert_allclose(clip_loss(x, y, s), want_clip, rtol=1e-5)
  want_sig = 0.0
  for i in range(6):
    for j in range(6):
      z = 1.0 if i == j else -1.0
      want_sig -= np.log(1.0 / (1.0 + np.exp(-z * (logits[i, j] + b))))
  np.testing.assert_allclose(sigmoid_loss(x, y, s, b), want_sig / 6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "sigmoid"])
def test_padding_rows_count_for_nothing(kind):
  x, y = _pairs(8, 4)
  w = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
  task = tasks.get("contrastive", loss_type=kind)
  aux = {"image": x, "text": y, "scale": jnp.float32(10.0), "bias": jnp.float32(-2.0)}
  sub = {k: (v[:5] if v.ndim else v) for k, v in aux.items()}
  padded, _ = task.loss(None, aux, {"_valid": w})
  real, _ = task.loss(None, sub, {})
  np.testing.assert_allclose(padded, real, rtol=1e-6)
  sums = task.eval_sums(None, aux, {"_valid": w})
  assert float(sums["count"]) == 5
  np.testing.assert_allclose(sums["loss"] / 5, real, rtol=1e-6)


def test_temperature_and_bias_initialisation_and_clipping():
  batch = {"image": np.zeros((2, 8, 8), np.float32), "caption_tokens": np.ones((2, 4), np.int32)}
  clip = models.build("clip", {"vocab_size": VOCAB, "width": 16, "embed_dim": 8, "num_layers": 1})
  params = clip.init(jax.random.PRNGKey(0), batch, train=False)["params"]
  np.testing.assert_allclose(nn_unbox(params["log_scale"]), math.log(1 / 0.07), rtol=1e-6)
  assert "bias" not in params
  _, aux = clip.apply({"params": params}, batch, train=False)
  np.testing.assert_allclose(aux["scale"], 1 / 0.07, rtol=1e-5)
  assert float(aux["bias"]) == 0.0
  np.testing.assert_allclose(np.linalg.norm(aux["image"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(aux["text"], axis=-1), 1.0, rtol=1e-5)
  big = jax.tree_util.tree_map(lambda v: v, params)
  big["log_scale"] = nn_rebox(params["log_scale"], jnp.float32(math.log(500.0)))
  _, aux = clip.apply({"params": big}, batch, train=False)
  assert float(aux["scale"]) == pytest.approx(100.0)  # CLIP's clip at 100
  siglip = models.build("clip", {"loss": "sigmoid", "vocab_size": VOCAB, "width": 16, "embed_dim": 8,
                                 "num_layers": 1})
  params = siglip.init(jax.random.PRNGKey(0), batch, train=False)["params"]
  np.testing.assert_allclose(nn_unbox(params["log_scale"]), math.log(10.0), rtol=1e-6)
  assert float(nn_unbox(params["bias"])) == -10.0
  assert params["bias"].names == () and params["log_scale"].names == ()  # logical axes (scalars)
  with pytest.raises(ValueError, match="image_tower"):
    models.build("clip", {"vocab_size": VOCAB, "image_tower": "cnn"}).init(jax.random.PRNGKey(0), batch,
                                                                            train=False)


def nn_unbox(x):
  return np.asarray(x.unbox() if hasattr(x, "unbox") else x)


def nn_rebox(box, value):
  return box.replace_boxed(value) if hasattr(box, "replace_boxed") else value


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_chunked_sigmoid_loss_and_grads_equal_the_dense_form(shape):
  x, y = _pairs(16, 8)
  w = jnp.ones(16).at[14:].set(0.0)
  mesh = _mesh(shape)
  dense = jax.jit(jax.value_and_grad(lambda *a: sigmoid_loss(*a, w), argnums=(0, 1, 2, 3)))
  ring = jax.jit(jax.value_and_grad(lambda *a: sigmoid_loss_chunked(*a, w, mesh=mesh), argnums=(0, 1, 2, 3)))
  args = (x, y, jnp.float32(10.0), jnp.float32(-10.0))
  want, got = dense(*args), ring(*args)
  for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)


def test_chunked_sigmoid_never_forms_the_full_logits():
  b, d = 16, 4
  x, y = _pairs(b, d)
  mesh = _mesh()
  s, bias = jnp.float32(10.0), jnp.float32(-10.0)
  ring = jax.jit(jax.grad(lambda x, y: sigmoid_loss_chunked(x, y, s, bias, mesh=mesh), argnums=(0, 1)))
  text = ring.lower(x, y).compile().as_text()
  assert "collective-permute" in text and f"f32[{b // 8},{b // 8}]" in text
  assert f"f32[{b},{b}]" not in text
  dense = jax.jit(jax.grad(lambda x, y: sigmoid_loss(x, y, s, bias), argnums=(0, 1))).lower(x, y).compile()
  assert f"f32[{b},{b}]" in dense.as_text()  # the check above can fail


@pytest.mark.parametrize("kind", ["clip", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_global_batch_loss_and_grads_on_a_mesh_equal_one_device(kind):
  """The engine's jit with the batch split over 8 devices (NamedSharding) gives the loss and gradients of
  the whole batch: nothing is lost at the device boundaries (the "gather with grad" question); for SigLIP
  with chunked=True the ring runs (the activation-sharding context gives the task the mesh)."""
  from mmjax.train.mesh import parse_rules

  b = 16
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((b, 8, 8), np.float32), "caption_tokens": rng.integers(4, VOCAB, (b, 6)),
           "caption_tokens_mask": np.arange(6)[None] < rng.integers(3, 7, (b, 1)),
           "_valid": np.ones((b,), np.float32)}
  batch["caption_tokens"] = batch["caption_tokens"].astype(np.int32)
  model = models.build("clip", {"loss": kind, "vocab_size": VOCAB, "width": 16, "embed_dim": 8,
                                "num_layers": 1, "num_heads": 2})
  task = tasks.get("contrastive", loss_type=kind, chunked=kind == "sigmoid")
  params = jax.tree_util.tree_map(np.asarray, nn_unbox_tree(model.init(jax.random.PRNGKey(0), batch,
                                                                       train=False)["params"]))

  def loss_fn(p, data):
    outputs, aux = model.apply({"params": p}, data, train=True)
    return task.loss(outputs, aux, data)[0]

  grad = jax.value_and_grad(loss_fn)
  want = jax.jit(grad)(params, batch)
  mesh = _mesh()

  def on_mesh(p, data):
    with axes.activation_sharding(mesh, parse_rules()):
      return grad(p, data)

  spec = NamedSharding(mesh, P(("data", "fsdp")))
  rep = NamedSharding(mesh, P())
  sharded = jax.jit(on_mesh, in_shardings=(rep, spec), out_shardings=rep)
  got = sharded(params, batch)
  if kind == "sigmoid":
    assert "collective-permute" in sharded.lower(params, batch).compile().as_text()
  for a, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(a), atol=1e-5, rtol=1e-5)


def nn_unbox_tree(tree):
  import flax.linen as nn

  return nn.unbox(tree)


def test_keep_labels_filters_the_training_split(tiny_config):
  from mmjax.data import pipeline
  from mmjax.data.errors import DatasetError

  cfg = tiny_config("clip_digits", "runlocal", ["data.keep_labels=7,9"])
  batches = pipeline.train_batches(cfg.data, global_batch_size=64, seed=0)
  labels = np.concatenate([next(batches)["label"] for _ in range(3)])
  assert set(labels.tolist()) == {7, 9}
  assert pipeline.parse_labels("") == () and pipeline.parse_labels("0, 3") == (0, 3)
  with pytest.raises(DatasetError, match="keep_labels"):
    pipeline.parse_labels("seven")


def test_zero_shot_helpers_known_answers():
  sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
  relevant = np.eye(3, dtype=bool)
  r = zero_shot.recall_at_k(sim, relevant, (1, 2))  # own item ranked 1st, 2nd, 2nd
  assert r[1] == pytest.approx(1 / 3) and r[2] == pytest.approx(1.0)
  relevant[1, 2] = True  # an identical caption counts as a hit
  assert zero_shot.recall_at_k(sim, relevant, (1,))[1] == pytest.approx(2 / 3)
  scores = np.array([[0.0, 1.0, 0.5], [0.0, 0.2, 0.9], [1.0, 0.0, 0.0]])
  labels = np.array([1, 1, 0])
  assert zero_shot.accuracy_among(scores, labels, [0, 1, 2]) == pytest.approx(2 / 3)
  assert zero_shot.accuracy_among(scores, labels, [1, 2]) == pytest.approx(1 / 2)  # row 2 not counted
  templates = ("this is a {digit} .", "the digit {digit} .")
  tokens, mask = zero_shot.class_prompts(("seven", "eight"), templates, 8)
  assert tokens.shape == (4, 8) and mask[0].sum() == 5 and mask[1].sum() == 4
  emb = zero_shot.class_embeddings(np.array([[1.0, 0], [1, 0], [0, 2], [0, 4]]), 2)
  np.testing.assert_allclose(emb, [[1, 0], [0, 1]])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 3)) + np.repeat(np.eye(3) * 4, 20, axis=0)
  y = np.repeat(np.arange(3), 20)
  predict = zero_shot.linear_probe(x, y, 3, steps=200)
  assert np.mean(np.argmax(predict(x), 1) == y) > 0.95


@pytest.mark.slow
def test_runlocal_trains_and_zero_shot_writes_metrics(tiny_config, tmp_path):
  from mmjax.files import read_json
  from mmjax.train.loop import train_and_evaluate

  for arg in ("runlocal", "sigmoid,runlocal"):
    cfg = tiny_config("clip_digits", arg)
    cfg.evaluators = {"zero_shot": {"name": "zero_shot", "every": 0,
                                    "kwargs": {"probe_steps": 20, "held_out": "7,8,9"}}}
    workdir = tmp_path / arg.replace(",", "_")
    train_and_evaluate(cfg, workdir)
    metrics = read_json(workdir / "metrics.json")
    flat = str(metrics)
    for key in ("zero_shot/held_out", "zero_shot/all", "retrieval/i2t/R@10", "retrieval/t2i/R@1",
                "probe/all"):
      assert key in flat
    assert list((workdir / "zero_shot").glob("*.json"))
