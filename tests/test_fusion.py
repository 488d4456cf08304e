"""TFN and LMF: the fusion operators (known entries, full-rank equivalence), golden parity with the original
PyTorch code, padding invariance, field checks, learning on a tiny batch."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.errors import InputError
from mmjax.layers import fusion
from mmjax.models import lmf, tfn

GOLDEN = Path(__file__).resolve().parent / "data" / "lmf_original_golden.npz"


# --- the operators ----------------------------------------------------------------------------------------


def test_tensor_fusion_keeps_the_constant_unimodal_bimodal_and_trimodal_terms():
  a, v, t = np.array([[2.0, 3.0]]), np.array([[5.0]]), np.array([[7.0, 11.0, 13.0]])
  z = np.asarray(fusion.tensor_fusion([jnp.asarray(a), jnp.asarray(v), jnp.asarray(t)]))
  assert z.shape == (1, fusion.tensor_fusion_size((2, 1, 3))) == (1, 3 * 2 * 4)
  z = z.reshape(3, 2, 4)  # row-major: audio slowest
  assert z[0, 0, 0] == 1.0
  np.testing.assert_array_equal(z[1:, 0, 0], a[0])  # unimodal terms
  np.testing.assert_array_equal(z[0, 1:, 0], v[0])
  np.testing.assert_array_equal(z[0, 0, 1:], t[0])
  np.testing.assert_array_equal(z[1:, 1:, 0], np.outer(a[0], v[0]))  # bimodal terms
  np.testing.assert_array_equal(z[0, 1:, 1:], np.outer(v[0], t[0]))
  np.testing.assert_array_equal(z[1:, 0, 1:], np.outer(a[0], t[0]))
  np.testing.assert_array_equal(z[1:, 1:, 1:], np.einsum("i,j,k->ijk", a[0], v[0], t[0]))  # trimodal


def _vectors(dims, b=4, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((b, d)).astype(np.float32) for d in dims]


def test_full_rank_low_rank_fusion_equals_the_tensor_fusion_contraction():
  """An arbitrary TFN weight W [A+1, V+1, T+1, O] has an exact CP decomposition of rank (A+1)(V+1): term
  (i, j) is e_i (x) e_j (x) W[i, j, :, o]. LMF with those factors must equal ``tensor_fusion(h) @ W + b``;
  and conversely the W built (here, in numpy) from random LMF factors must give LMF's output."""
  dims, out = (3, 2, 4), 5
  hs = _vectors(dims)
  rng = np.random.default_rng(1)
  w = rng.standard_normal((*(d + 1 for d in dims), out)).astype(np.float32)
  bias = rng.standard_normal(out).astype(np.float32)
  want = np.asarray(fusion.tensor_fusion(hs)) @ w.reshape(-1, out) + bias
  # Hand-computed contraction of the [1; h] vectors with W: checks tensor_fusion's layout independently.
  z1 = [np.concatenate([np.ones((4, 1), np.float32), h], axis=1) for h in hs]
  np.testing.assert_allclose(want, np.einsum("ba,bv,bt,avto->bo", *z1, w) + bias, rtol=1e-5, atol=1e-5)

  (a1, v1, _), rank = (d + 1 for d in dims), (dims[0] + 1) * (dims[1] + 1)
  f_a, f_v = np.zeros((rank, a1, out), np.float32), np.zeros((rank, v1, out), np.float32)
  f_t = np.zeros((rank, dims[2] + 1, out), np.float32)
  for r, (i, j) in enumerate(np.ndindex(a1, v1)):
    f_a[r, i], f_v[r, j], f_t[r] = 1.0, 1.0, w[i, j]
  got = fusion.low_rank_fusion(hs, [f_a, f_v, f_t], np.ones(rank, np.float32), bias)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # One rank term fewer is no longer W: the comparison above can fail.
  short = fusion.low_rank_fusion(hs, [f_a[1:], f_v[1:], f_t[1:]], np.ones(rank - 1, np.float32), bias)
  assert np.abs(np.asarray(short) - want).max() > 1e-2

  # Converse: random factors and rank weights -> the full weight, by an explicit einsum.
  r = 3
  factors = [rng.standard_normal((r, d + 1, out)).astype(np.float32) for d in dims]
  rank_w = rng.standard_normal(r).astype(np.float32)
  w_full = np.einsum("r,rao,rvo,rto->avto", rank_w, *factors)
  np.testing.assert_allclose(fusion.low_rank_weight(factors, rank_w), w_full, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      fusion.low_rank_fusion(hs, factors, rank_w, bias),
      np.asarray(fusion.tensor_fusion(hs)) @ w_full.reshape(-1, out) + bias, rtol=1e-5, atol=1e-5)


def test_low_rank_fusion_module_parameters_and_shape_errors():
  hs = _vectors((3, 2))
  module = fusion.LowRankFusion(features=5, rank=4)
  params = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), hs))["params"])
  assert jax.tree_util.tree_map(np.shape, params) == {
      "factor_0": (4, 4, 5), "factor_1": (4, 3, 5), "rank_weights": (4,), "bias": (5,)}
  assert jax.eval_shape(lambda p: module.apply({"params": p}, hs), params).shape == (4, 5)
  with pytest.raises(ValueError, match=r"must be \[R, 4, O\]"):
    fusion.low_rank_fusion(hs, [np.zeros((2, 3, 5)), np.zeros((2, 3, 5))], np.ones(2))


# --- golden parity with the original code -----------------------------------------------------------------


def golden_parameters(spec, seed):
  """``{name: float32 array}`` from ``[[name, shape, offset, scale], ...]`` (scripts/make_lmf_golden.py)."""
  rng = np.random.RandomState(seed)  # frozen bit stream (NEP 19): the same values with every numpy
  return {name: (offset + scale * rng.standard_normal(shape)).astype(np.float32)
          for name, shape, offset, scale in spec}


def _dense(sd, name):
  return {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}


def _mlp_subnet(sd, prefix):
  """The original SubNet (BatchNorm1d, eval mode, then 3 linear layers) as our ``input_norm="none"`` MLP:
  the BatchNorm's per-feature affine map ``x s + t`` folded into ``linear_1``."""
  g = lambda k: sd[f"{prefix}.{k}"].astype(np.float64)  # noqa: E731
  s = g("norm.weight") / np.sqrt(g("norm.running_var") + 1e-5)
  t = g("norm.bias") - g("norm.running_mean") * s
  w1 = g("linear_1.weight")
  first = {"kernel": (s[:, None] * w1.T).astype(np.float32),
           "bias": (g("linear_1.bias") + w1 @ t).astype(np.float32)}
  return {"linear_1": first, **{k: _dense(sd, f"{prefix}.{k}") for k in ("linear_2", "linear_3")}}


def _text_subnet(sd, prefix):
  lstm = {"w_ih": sd[f"{prefix}.rnn.weight_ih_l0"].T, "b_ih": sd[f"{prefix}.rnn.bias_ih_l0"],
          "w_hh": sd[f"{prefix}.rnn.weight_hh_l0"].T, "b_hh": sd[f"{prefix}.rnn.bias_hh_l0"]}
  return {"lstm": lstm, "out": _dense(sd, f"{prefix}.linear_1")}


def _golden(z, prefix):
  spec = json.loads(str(z[f"{prefix}_param_spec"]))
  sd = golden_parameters(spec, int(z[f"{prefix}_param_seed"]))
  sums = np.array([sd[name].astype(np.float64).sum() for name, *_ in spec])
  np.testing.assert_array_equal(sums, z[f"{prefix}_param_sums"], err_msg="not the recipe")
  subnets = {"audio_subnet": _mlp_subnet(sd, "audio_subnet"), "text_subnet": _text_subnet(sd, "text_subnet"),
             "vision_subnet": _mlp_subnet(sd, "video_subnet")}
  return sd, subnets


def _close(got, want, tol=1e-5):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  rel = np.abs(got - want).max() / np.abs(want).max()
  assert rel < tol, rel


def test_golden_outputs_of_the_original_lmf_and_tfn_code():
  """Our TFN and LMF, given the original models' parameters, reproduce the original PyTorch code, whole model.

  ``tests/data/lmf_original_golden.npz`` was made by ``scripts/make_lmf_golden.py`` from the original code
  (Justin1904/Low-rank-Multimodal-Fusion at ea47551 and Justin1904/TensorFusionNetworks at ef0e78b, torch
  2.13.0 CPU): ``LMF`` (rank 4, 3 outputs) and ``TFN`` (32 post-fusion units) with hidden widths 4/16/128
  and text output 64 on 5/20/300 input features, every parameter and BatchNorm statistic from the stored
  recipe, eval mode, float64, 3 examples (text 8 steps). Checked here: (1) the fusion and post-fusion
  parts alone, fed the original subnetworks' outputs; (2) the whole model from the raw inputs, with the
  original's eval-mode BatchNorm folded into the first layer of our ``input_norm="none"`` MLP subnetworks
  (our default LayerNorm has no BatchNorm counterpart, see mmjax/models/tfn.py) and its LSTM imported.
  """
  z = np.load(GOLDEN)
  hp = json.loads(str(z["hparams"]))
  hs = [z["lmf_h_audio"], z["lmf_h_video"], z["lmf_h_text"]]
  batch = {"audio": z["input_audio"][:, None], "vision": z["input_video"][:, None], "text": z["input_text"]}
  common = dict(hidden_dims=hp["hidden_dims"], out_dims=(*hp["hidden_dims"][:2], hp["text_out"]),
                input_norm="none")

  sd, subnets = _golden(z, "lmf")
  factors = [sd["audio_factor"], sd["video_factor"], sd["text_factor"]]
  fused = fusion.low_rank_fusion([h.astype(np.float32) for h in hs], factors, sd["fusion_weights"][0],
                                 sd["fusion_bias"][0])
  _close(fused, z["lmf_output"])
  model = lmf.LMF(output_dim=hp["lmf"]["output_dim"], rank=hp["lmf"]["rank"], **common)
  params = {**subnets, "fusion": {"factor_0": factors[0], "factor_1": factors[1], "factor_2": factors[2],
                                  "rank_weights": sd["fusion_weights"][0], "bias": sd["fusion_bias"][0]}}
  out, _ = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(params, batch)
  _close(out, z["lmf_output"])

  sd, subnets = _golden(z, "tfn")
  model = tfn.TFN(post_fusion_dim=hp["tfn"]["post_fusion_dim"], **common)
  post = {f"layer_{i}": _dense(sd, f"post_fusion_layer_{i}") for i in (1, 2, 3)}
  hs = [z["tfn_h_audio"], z["tfn_h_video"], z["tfn_h_text"]]
  head = tfn.PostFusion(hp["tfn"]["post_fusion_dim"], 1, 0.0, (-3.0, 3.0))
  y = head.apply({"params": post}, fusion.tensor_fusion([h.astype(np.float32) for h in hs]), train=False)
  _close(y, z["tfn_output"])
  params = {**subnets, "post_fusion": post}
  out, aux = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(params, batch)
  _close(out, z["tfn_output"])
  assert aux["fused"].shape == (3, 5 * 17 * 65)


# --- the models -------------------------------------------------------------------------------------------

TINY = dict(modalities=("audio", "image", "text"), subnets=("lstm", "flat", "lstm"), hidden_dims=(6, 5, 4),
            out_dims=(3, 2, 4), dropouts=(0.1, 0.1, 0.1), vocab_size=11, embed_dim=4, output_dim=3,
            output_range=None)


def init_params(model, batch):
  """Parameters of ``model`` for ``batch`` (``init`` compiled once: faster than running it eagerly)."""
  return jax.jit(lambda b: nn.unbox(model.init(jax.random.PRNGKey(0), b, train=False))["params"])(batch)


def tiny_batch(b=3, seed=0):
  rng = np.random.default_rng(seed)
  lengths_a, lengths_t = np.array([7, 4, 2]), np.array([5, 6, 1])
  return {"audio": rng.standard_normal((b, 7, 2)).astype(np.float32),
          "audio_mask": np.arange(7)[None] < lengths_a[:, None],
          "image": rng.random((b, 3, 3)).astype(np.float32),
          "text": rng.integers(0, 11, (b, 6)).astype(np.int32),
          "text_mask": np.arange(6)[None] < lengths_t[:, None],
          "label": np.array([0, 1, 2], np.int32)}


def _move_padding_to_front(batch, key):
  x, mask = batch[key].copy(), batch[f"{key}_mask"]
  for i, n in enumerate(mask.sum(1)):
    x[i] = np.concatenate([x[i][n:], x[i][:n]])
  return x, mask[:, ::-1].copy()


@pytest.mark.parametrize("cls, extra", [(tfn.TFN, dict(post_fusion_dim=8)), (lmf.LMF, dict(rank=2))],
                         ids=["tfn", "lmf"])
def test_padding_position_does_not_change_the_output(cls, extra):
  model = cls(**TINY, **extra)
  batch = tiny_batch()
  params = init_params(model, batch)
  apply = jax.jit(lambda b: model.apply({"params": params}, b, train=False)[0])
  back = np.asarray(apply(batch))
  front = dict(batch)
  for key in ("audio", "text"):
    front[key], front[f"{key}_mask"] = _move_padding_to_front(batch, key)
  np.testing.assert_allclose(apply(front), back, rtol=1e-5, atol=1e-6)
  # The padded steps are ignored: changing them changes nothing; changing a valid step does.
  noisy = dict(batch, audio=np.where(batch["audio_mask"][..., None], batch["audio"], 99.0))
  np.testing.assert_allclose(apply(noisy), back, rtol=1e-5, atol=1e-6)
  moved = dict(batch, audio=batch["audio"] + 1.0)
  assert np.abs(np.asarray(apply(moved)) - back).max() > 1e-4


def test_registry_defaults_and_tensor_width():
  assert models.get("tfn") is tfn.TFN and models.get("lmf") is lmf.LMF
  batch = {"audio": np.zeros((2, 4, 5), np.float32), "vision": np.zeros((2, 4, 20), np.float32),
           "text": np.zeros((2, 6, 300), np.float32)}
  for model, fused in ((tfn.TFN(), 5 * 17 * 65), (lmf.LMF(), 4 + 16 + 64)):
    init = lambda m=model: m.init_with_output(jax.random.PRNGKey(0), batch, train=False)[0]  # noqa: E731
    out, aux = jax.eval_shape(init)
    assert out.shape == (2, 1) and aux["fused"].shape == (2, fused)


@pytest.mark.parametrize("kwargs, message", [
    (dict(subnets=("mlp", "lstm")), r"subnets has 2 entries but there are 3 modalities"),
    (dict(subnets=("mlp", "gru", "lstm")), r"unknown subnetwork kind\(s\) \['gru'\]"),
    (dict(input_norm="batch"), r"input_norm is 'batch'"),
    (dict(out_dims=(4, 0, 64)), r"must be >= 1"),
    (dict(modalities=()), r"at least one modality"),
])
def test_bad_fields_say_what_to_fix(kwargs, message):
  batch = {"audio": np.zeros((2, 4, 5), np.float32), "vision": np.zeros((2, 4, 3), np.float32),
           "text": np.zeros((2, 6, 7), np.float32)}
  for cls in (tfn.TFN, lmf.LMF):
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(lambda c=cls: c(**kwargs).init(jax.random.PRNGKey(0), batch, train=False))
  with pytest.raises(ValueError, match="rank must be >= 1"):
    jax.eval_shape(lambda: lmf.LMF(rank=0).init(jax.random.PRNGKey(0), batch, train=False))
  with pytest.raises(InputError, match="needs modality 'vision'"):
    jax.eval_shape(lambda: tfn.TFN().init(jax.random.PRNGKey(0), {"audio": batch["audio"]}, train=False))


def test_output_range_squashes_the_regression_output():
  batch = {k: v for k, v in tiny_batch().items() if k != "label"}
  model = tfn.TFN(**{**TINY, "output_dim": 1, "output_range": (-3.0, 3.0)}, post_fusion_dim=8)
  params = init_params(model, batch)
  params = jax.tree_util.tree_map(lambda p: 50.0 * p, params)  # saturate the sigmoid
  out = np.asarray(jax.jit(lambda p: model.apply({"params": p}, batch, train=False)[0])(params))
  assert out.shape == (3, 1) and (np.abs(out) <= 3.0).all() and np.abs(out).max() > 2.9


@pytest.mark.parametrize("cls, extra", [(tfn.TFN, dict(post_fusion_dim=8)), (lmf.LMF, dict(rank=2))],
                         ids=["tfn", "lmf"])
def test_loss_decreases_on_a_tiny_batch(cls, extra):
  model = cls(**{**TINY, "dropouts": (0.0, 0.0, 0.0)}, **extra)
  batch = tiny_batch()
  params = init_params(model, batch)
  opt = optax.adam(1e-2)

  def loss_fn(p):
    logits = model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  @jax.jit
  def steps(p):
    def body(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    return jax.lax.scan(body, (p, opt.init(p)), None, length=60)[1]

  losses = np.asarray(steps(params))
  assert losses[-1] < 0.2 * losses[0], losses[[0, -1]]
