"""One train step sharded over 8 devices equals the same step on 1 device, for the paper models."""

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import models, tasks
from mmjax.train.mesh import batch_sharding, make_mesh
from mmjax.train.optim import Optimizer
from mmjax.train.run import init_state, make_global_batch
from mmjax.train.step import train_step

B = 8


def mult_case():
  rng = np.random.default_rng(0)
  lengths = {"text": 6, "audio": 11, "vision": 9}
  widths = {"text": 12, "audio": 5, "vision": 7}
  batch = {k: rng.standard_normal((B, t, widths[k])).astype(np.float32) for k, t in lengths.items()}
  for k, t in lengths.items():
    batch[f"{k}_mask"] = np.arange(t)[None] < rng.integers(2, t + 1, (B, 1))
  batch["label"] = rng.uniform(-3, 3, B).astype(np.float32)
  # No dropout: random bits cost most of the compile time on CPU, and dropout under sharding is covered by
  # tests/test_train.py (late fusion through the whole engine).
  rates = ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout")
  no_dropout = dict.fromkeys(rates, 0.0)
  model = models.build("mult", {"width": 8, "num_layers": 1, "num_heads": 2, "kernel_sizes": (1, 3, 1),
                                **no_dropout})
  return model, tasks.get("regression"), batch


def vae_case(name):
  """MFM / MVAE / MMVAE on an image + variable-length audio + token-text batch; the step samples latents
  (the ``latent`` stream) and MFM's surrogate drops modalities (``dropout`` stream), so this also checks
  that the random draws do not depend on the sharding. MFM's MMD couples all examples of the batch."""
  rng = np.random.default_rng(1)
  batch = {
      "image": rng.random((B, 8, 8), np.float32),
      "audio": rng.standard_normal((B, 6, 10)).astype(np.float32),
      "audio_mask": np.arange(6)[None] < rng.integers(2, 7, (B, 1)),
      "text": rng.integers(0, 20, (B, 5)).astype(np.int32),
      "text_mask": np.arange(5)[None] < rng.integers(1, 6, (B, 1)),
      "label": rng.integers(0, 4, B).astype(np.int32),
  }
  model = models.build(name, {"vocab_size": 20, "width": 8, "num_heads": 2, "num_classes": 4})
  return model, tasks.get("vae"), batch


def step_on(devices, model, task, batch, state, tx):
  mesh = make_mesh(devices=devices)
  replicated = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), state)
  state = jax.device_put(state, replicated)
  fn = jax.jit(functools.partial(train_step, model=model, optimizer=tx, task=task),
               in_shardings=(replicated, batch_sharding(mesh)), out_shardings=(replicated, None))
  new_state, metrics = fn(state, make_global_batch(batch, batch_sharding(mesh)))
  return jax.device_get(new_state.params), jax.device_get(metrics)


CASES = {"mult": mult_case, **{n: functools.partial(vae_case, n) for n in ("mfm", "mvae", "mmvae")}}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_sharded_step_equals_single_device(case):
  model, task, batch = case()
  # SGD: linear in the gradients (Adam amplifies the sign of ~0 gradients)
  tx = Optimizer(tx=optax.sgd(0.1), schedule=optax.constant_schedule(0.1))
  state = jax.jit(lambda: init_state(model, tx, {k: v[:1] for k, v in batch.items()}, seed=0))()
  params_1, metrics_1 = step_on(jax.devices()[:1], model, task, batch, state, tx)
  params_8, metrics_8 = step_on(jax.devices()[:8], model, task, batch, state, tx)
  np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics_8["grad_norm"], metrics_1["grad_norm"], rtol=1e-5)
  # Parameters after one step, compared at the scale of each tensor: a different reduction order changes
  # the last bits of large entries (a random MulT's L1 gradients are large), nothing more.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_8), jax.tree_util.tree_leaves(params_1),
                          strict=True):
    scale = max(float(np.abs(b).max()), 1.0)
    assert float(np.abs(a - b).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)
