"""MulT: golden parity with the original PyTorch code, checkpoint import, a numpy known-answer block,
padding invariance, shapes, learning on a tiny batch."""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.errors import InputError
from mmjax.models import mult, registry
from mmjax.models.convert import mult_torch

GOLDEN = Path(__file__).resolve().parent / "data" / "mult_original_golden.npz"
FEATS = (7, 5, 6)  # text, audio, vision input widths of the tiny tests


def tiny(**kw):
  cfg = dict(width=8, num_heads=2, num_layers=1, **kw)
  return mult.MulT(**cfg)


def fake_batch(lens=(6, 9, 7), b=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
      key: rng.standard_normal((b, t, f)).astype(np.float32)
      for key, t, f in zip(("text", "audio", "vision"), lens, FEATS, strict=True)
  }


def shapes_of(tree):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def random_params(model, batch, seed=0, std=0.3):
  """Random parameters of the right shapes without compiling ``init`` (tests stay fast)."""
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), batch, train=False)))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: (1.0 if path[-1].key == "scale" else 0.0) + std * rng.standard_normal(a.shape).astype(
          np.float32), abstract)


# --- golden parity ----------------------------------------------------------------------------------------


def golden_parameters(spec, seed):
  """``{name: float32 array}`` from ``[[name, shape, offset, scale], ...]`` (scripts/make_mult_golden.py)."""
  rng = np.random.RandomState(seed)  # frozen bit stream (NEP 19): the same values with every numpy
  return {name: (offset + scale * rng.standard_normal(shape)).astype(np.float32)
          for name, shape, offset, scale in spec}


def test_golden_outputs_of_the_original_code():
  """Our MulT, given the original model's parameters, reproduces the original code's outputs.

  ``tests/data/mult_original_golden.npz`` was made by ``scripts/make_mult_golden.py`` from the original
  PyTorch code (yaohungt/Multimodal-Transformer at a670936, torch 2.13.0 CPU): its ``MULTModel`` with the
  original ``main.py`` defaults (300/74/35 input features, d = 30, 5 levels, 5 heads, three targets,
  attention mask), every one of its 1,073,731 parameters (biases and LayerNorms included) overwritten by
  ``golden_parameters`` from the stored recipe, run in eval mode in float64 on 3 examples of unaligned
  lengths (text 12, audio 20, vision 15). The file stores the recipe, a checksum per tensor, the inputs and
  the outputs (75 KB); the parameters are rebuilt here and imported by their original names.
  """
  z = np.load(GOLDEN)
  spec = json.loads(str(z["param_spec"]))
  state_dict = golden_parameters(spec, int(z["param_seed"]))
  sums = np.array([state_dict[name].astype(np.float64).sum() for name, *_ in spec])
  np.testing.assert_array_equal(sums, z["param_sums"], err_msg="the parameters differ from the generator's")
  model = mult.MulT(**mult_torch.kwargs_from_original_hparams(json.loads(str(z["hparams"]))))
  params = mult_torch.from_torch_state_dict(state_dict, model)
  batch = {"text": z["x_l"], "audio": z["x_a"], "vision": z["x_v"]}
  out, aux = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(params, batch)
  for got, want in ((out, z["output"]), (aux["last_hs"], z["last_hs"])):
    assert got.shape == want.shape
    rel = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    assert rel < 1e-5, rel


# --- checkpoint import ------------------------------------------------------------------------------------


def original_state_dict_shapes(d, layers, feats, kernels, targets, out_dim):
  """Names/shapes of the original state dict, written from the reference notes (buffers included)."""
  shapes = {f"proj_{x}.weight": (d, f, k) for x, f, k in zip("lav", feats, kernels, strict=True)}
  nets = []
  for t in targets:
    nets += [(f"trans_{t}_with_{s}", d, layers) for s in "lav" if s != t]
  nets += [(f"trans_{t}_mem", 2 * d, max(layers, 3)) for t in targets]
  for name, w, n in nets:
    shapes[f"{name}.version"] = (1,)
    shapes[f"{name}.embed_positions._float_tensor"] = (1,)
    for i in range(n):
      p = f"{name}.layers.{i}"
      shapes |= {f"{p}.self_attn.in_proj_weight": (3 * w, w), f"{p}.self_attn.in_proj_bias": (3 * w,),
                 f"{p}.self_attn.out_proj.weight": (w, w), f"{p}.self_attn.out_proj.bias": (w,),
                 f"{p}.fc1.weight": (4 * w, w), f"{p}.fc1.bias": (4 * w,),
                 f"{p}.fc2.weight": (w, 4 * w), f"{p}.fc2.bias": (w,)}
      for j in "01":
        shapes |= {f"{p}.layer_norms.{j}.weight": (w,), f"{p}.layer_norms.{j}.bias": (w,)}
    shapes |= {f"{name}.layer_norm.weight": (w,), f"{name}.layer_norm.bias": (w,)}
  c = 2 * d * len(targets)
  shapes |= {"proj1.weight": (c, c), "proj1.bias": (c,), "proj2.weight": (c, c), "proj2.bias": (c,),
             "out_layer.weight": (out_dim, c), "out_layer.bias": (out_dim,)}
  return shapes


@pytest.mark.parametrize("targets", [("text", "audio", "vision"), ("audio",)])
def test_state_dict_import_maps_every_name_exactly_once(targets):
  model = tiny(kernel_sizes=(1, 2, 3), output_dim=2, target_modalities=targets)
  letters = [t[0] if t != "text" else "l" for t in targets]
  shapes = original_state_dict_shapes(8, 1, FEATS, (1, 2, 3), letters, 2)
  # every tensor filled with its own constant 1, 2, 3, ... (exact in float32)
  sd = {n: np.full(s, i + 1, np.float32) for i, (n, s) in enumerate(shapes.items())}
  params = mult_torch.from_torch_state_dict(sd, model)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), fake_batch(), train=False)))
  abstract = abstract["params"]
  assert shapes_of(params) == shapes_of(abstract)
  counts = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    stacked = any(getattr(k, "key", None) == "layers" for k in path)  # [layers, ...] under nn.scan
    for piece in (np.asarray(leaf) if stacked else np.asarray(leaf)[None]):
      values = np.unique(piece)
      assert values.size == 1, f"{jax.tree_util.keystr(path)} mixes several original tensors"
      counts[int(values[0])] = counts.get(int(values[0]), 0) + piece.size
  buffers = {i + 1 for i, n in enumerate(shapes) if n.endswith(("version", "_float_tensor"))}
  want = {i + 1: math.prod(s) for i, s in enumerate(shapes.values()) if i + 1 not in buffers}
  assert counts == want  # each original element lands in exactly one place


def test_state_dict_import_reports_missing_extra_and_wrong_shapes():
  model = tiny()
  sd = {n: np.zeros(s, np.float32)
        for n, s in original_state_dict_shapes(8, 1, FEATS, (1, 1, 1), "lav", 1).items()}
  mult_torch.from_torch_state_dict(sd, dict(width=8, num_heads=2, num_layers=1))  # kwargs work too
  broken = dict(sd)
  del broken["trans_a_mem.layers.2.fc1.bias"]
  broken["trans_x_mem.layers.0.fc1.bias"] = np.zeros(3, np.float32)
  broken["proj1.weight"] = np.zeros((48, 47), np.float32)
  broken["proj_a.weight"] = np.zeros((8, 5, 3), np.float32)
  with pytest.raises(ValueError) as err:
    mult_torch.from_torch_state_dict(broken, model)
  msg = str(err.value)
  assert "missing names ['trans_a_mem.layers.2.fc1.bias']" in msg
  assert "unexpected names ['trans_x_mem.layers.0.fc1.bias']" in msg
  assert "proj1.weight: expected (48, 48), found (48, 47)" in msg
  assert "proj_a.weight: expected (8, 'F', 1), found (8, 5, 3)" in msg


def test_mult_torch_loader_reads_npz_and_pt_state_dicts(tmp_path):
  """The registered loader (config.init.format = "mult_torch") gives what from_torch_state_dict gives, from
  an .npz of numpy arrays and (with torch installed) a .pt state dict read with weights_only=True."""
  model = tiny(kernel_sizes=(1, 2, 3), output_dim=2)
  shapes = original_state_dict_shapes(8, 1, FEATS, (1, 2, 3), "lav", 2)
  rng = np.random.default_rng(0)
  sd = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
  want = mult_torch.from_torch_state_dict(sd, model)
  load = models.loader("mult_torch")
  np.savez(tmp_path / "mult.npz", **sd)
  jax.tree_util.tree_map(np.testing.assert_array_equal, load(tmp_path / "mult.npz", model), want)
  with pytest.raises(mult_torch.MultImportError, match="do not exist"):
    load(tmp_path / "nope.pt", model)
  with pytest.raises(ValueError, match="builds MulT parameters, but the model being initialised is Frozen"):
    load(tmp_path / "mult.npz", models.build("frozen", {}))
  torch = pytest.importorskip("torch")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "mult.pt")
  jax.tree_util.tree_map(np.testing.assert_array_equal, load(tmp_path / "mult.pt", model), want)
  torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module: refused
  with pytest.raises(ValueError, match="weights_only=True"):
    load(tmp_path / "module.pt", model)


# --- known answer: one crossmodal transformer from the equations ------------------------------------------


def _np_ln(x, g, b):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b


def _np_pe(t, w, first):
  half = w // 2
  inv = np.exp(-np.arange(half) * np.log(10000.0) / (half - 1))
  pos = np.arange(1, t + 1)[:, None] * inv[None]
  pe = np.concatenate([np.sin(pos), np.cos(pos)], axis=1)
  return np.where((first == 0)[:, None], 0.0, pe)  # fairseq padding_idx 0 quirk


def test_crossmodal_block_known_answer():
  """One layer of ``Z + CM(LN0(Z), LN0(X))``, ``+ FFN(LN1(.))``, final LN (paper eq. 6), in numpy."""
  w, heads, lq, lk = 4, 2, 3, 5
  rng = np.random.default_rng(3)
  zq = rng.standard_normal((1, lq, w)).astype(np.float32)
  xk = rng.standard_normal((1, lk, w)).astype(np.float32)
  xk[0, 1, 0] = 0.0  # padding quirk: this key step gets no positional embedding
  enc = mult.MulTEncoder(1, heads, attn_mask=True)
  init = lambda: nn.unbox(enc.init(jax.random.PRNGKey(0), zq, xk, train=False))  # noqa: E731
  shapes = shapes_of(jax.eval_shape(init)["params"])
  params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s) * 0.5, shapes,
                                  is_leaf=lambda s: isinstance(s, tuple))
  got = jax.jit(lambda p: enc.apply({"params": p}, zq, xk, train=False))(params)

  p = jax.tree_util.tree_map(lambda a: a[0], params["layers"])  # the one layer of the scan stack
  lin = lambda x, q: x @ q["kernel"] + q["bias"]
  z = math.sqrt(w) * zq[0] + _np_pe(lq, w, zq[0, :, 0])
  x = math.sqrt(w) * xk[0] + _np_pe(lk, w, xk[0, :, 0])
  hq = _np_ln(z, p["ln0"]["scale"], p["ln0"]["bias"])
  hx = _np_ln(x, p["ln0"]["scale"], p["ln0"]["bias"])
  a = p["self_attn"]
  q, k, v = lin(hq, a["q_proj"]), lin(hx, a["k_proj"]), lin(hx, a["v_proj"])
  allowed = np.arange(lk)[None] <= np.arange(lq)[:, None] + abs(lk - lq)
  hd = w // heads
  outs = []
  for h in range(heads):
    s = slice(h * hd, (h + 1) * hd)
    logits = np.where(allowed, q[:, s] @ k[:, s].T / np.sqrt(hd), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    outs.append(weights / weights.sum(-1, keepdims=True) @ v[:, s])
  z = z + lin(np.concatenate(outs, -1), a["out_proj"])
  f = np.maximum(lin(_np_ln(z, p["ln1"]["scale"], p["ln1"]["bias"]), p["fc1"]), 0)
  z = z + lin(f, p["fc2"])
  want = _np_ln(z, params["layer_norm"]["scale"], params["layer_norm"]["bias"])
  np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-4, atol=1e-4)


# --- shapes, padding, learning ----------------------------------------------------------------------------


KERNELS = (1, 3, 2)  # the tiny model of the tests below: text, audio, vision conv kernel sizes


def test_output_shapes_aligned_unaligned_and_ablations():
  """Shapes by abstract evaluation (the golden and padding tests run the computation itself)."""
  assert registry.get("mult") is mult.MulT
  model = tiny(kernel_sizes=KERNELS)
  batch = fake_batch((6, 9, 7))
  for b in (batch, fake_batch((5, 5, 5))):  # unaligned, aligned
    (out, aux), variables = jax.eval_shape(
        lambda x: nn.unbox(model.init_with_output(jax.random.PRNGKey(0), x, train=False)), b)
    assert out.shape == (3, 1) and out.dtype == jnp.float32 and aux["last_hs"].shape == (3, 48)
  assert variables["params"]["proj_a"]["kernel"].shape == (3, 5, 8)
  assert variables["params"]["trans_l_mem"]["layers"]["fc1"]["kernel"].shape == (3, 16, 64)
  for target, t in (("text", "l"), ("audio", "a"), ("vision", "v")):
    single = tiny(target_modalities=(target,), output_dim=3)
    (out, aux), variables = jax.eval_shape(
        lambda b, m=single: m.init_with_output(jax.random.PRNGKey(0), b, train=False), batch)
    want = {f"trans_{t}_mem", *(f"trans_{t}_with_{s}" for s in "lav" if s != t)}
    assert {k for k in variables["params"] if k.startswith("trans")} == want
    assert out.shape == (3, 3) and aux["last_hs"].shape == (3, 16)
  with pytest.raises(InputError, match="needs modality 'audio'"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {"text": batch["text"]}, train=False))
  with pytest.raises(ValueError, match="target modality"):
    tiny(target_modalities=("smell",)).target_letters()
  for name, kw in mult.VARIANTS.items():
    assert mult.MulT(**kw).width == 40, name


def _pad(batch, lens, extra, front):
  """Per-row valid lengths ``lens[m]``; garbage appended (or the valid steps moved to the end)."""
  rng = np.random.default_rng(7)
  out = {}
  for key, n in lens.items():
    x = batch[key]
    b, t, f = x.shape
    big = rng.standard_normal((b, t + extra, f)).astype(np.float32) * 5
    mask = np.zeros((b, t + extra), bool)
    for i, ni in enumerate(n):
      start = t + extra - ni if front else 0
      big[i, start:start + ni] = x[i, :ni]
      mask[i, start:start + ni] = True
    out[key], out[key + "_mask"] = big, mask
  return out


@pytest.mark.parametrize("attn_mask", [False, True])
def test_padding_invariance(attn_mask):
  """Masked steps appended (back padding) or prepended (front padding) leave the output unchanged.

  The audio-target ablation (kernel 3 on the query side, kernels 1 and 2 on the key sides, the memory
  transformer and the readout) keeps the compile time a third of the full model's.
  """
  model = tiny(kernel_sizes=KERNELS, attn_mask=attn_mask, target_modalities=("audio",))
  params = random_params(model, fake_batch())
  batch = fake_batch((6, 9, 7))
  lens = {"text": [6, 4, 2], "audio": [9, 5, 3], "vision": [7, 7, 2]}
  apply = jax.jit(lambda b: model.apply({"params": params}, b, train=False))
  ref, ref_aux = apply(_pad(batch, lens, 0, front=False))
  for front in (False, True):
    out, aux = apply(_pad(batch, lens, 4, front))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["last_hs"], ref_aux["last_hs"], rtol=1e-5, atol=1e-5)


def test_masks_that_mask_nothing_give_the_original_masks_and_positions():
  """All-True masks reduce to the original: offset mask ``j <= i + |Lk - Lq|``, positions 1..T."""
  for lq, lk in ((4, 7), (7, 4)):
    got = mult.mult_attention_mask(jnp.ones((2, lq), bool), jnp.ones((2, lk), bool), lq, lk, True)
    want = np.arange(lk)[None] <= np.arange(lq)[:, None] + abs(lk - lq)
    np.testing.assert_array_equal(np.asarray(got), np.broadcast_to(want, (2, 1, lq, lk)))
    np.testing.assert_array_equal(mult.mult_attention_mask(None, None, lq, lk, True)[0, 0], want)
  assert mult.mult_attention_mask(None, None, 3, 5, False) is None
  first = jnp.array([[1.0, 0.0, 2.0]])
  np.testing.assert_array_equal(mult.positions(jnp.ones((1, 3), bool), first, True), [[1, 0, 3]])
  np.testing.assert_array_equal(mult.positions(None, first, True), [[1, 0, 3]])
  np.testing.assert_array_equal(mult.positions(jnp.array([[False, True, True]]), first, False), [[0, 1, 2]])


def test_loss_decreases_and_gradients_are_finite():
  """A few Adam steps with L1 loss (as the original for MOSI/MOSEI) and every dropout on.

  The single-target (audio) ablation runs every layer type at a third of the compile time of the full model.
  """
  batch = fake_batch((5, 8, 6), b=4)
  y = np.array([[-2.0], [0.5], [1.5], [3.0]], np.float32)
  model = tiny(kernel_sizes=KERNELS, target_modalities=("audio",))  # default dropouts (all on)
  params = random_params(model, batch, std=0.1)

  def loss_fn(p, rng):
    out, _ = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
    return jnp.abs(out - y).mean()

  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, opt, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, rng)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss, grads

  opt = tx.init(params)
  losses = []
  for i in range(40):
    params, opt, loss, grads = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
    if i == 0:
      leaves = jax.tree_util.tree_leaves(grads)
      assert all(np.isfinite(g).all() for g in leaves)
      assert all(np.abs(g).sum() > 0 for g in leaves)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_chunked_attention_with_a_small_key_block_matches_xla():
  """``chunk_size`` reaches the "chunked" kernel (several key blocks here) and gives the dense result."""
  batch = fake_batch((6, 9, 7))
  ref = tiny(target_modalities=("audio",))
  params = jax.jit(lambda b: ref.init(jax.random.PRNGKey(0), b, train=False)["params"])(batch)
  out_ref, _ = jax.jit(lambda p, b: ref.apply({"params": p}, b, train=False))(params, batch)
  chunked = tiny(target_modalities=("audio",), attention="chunked", chunk_size=4)
  out, _ = jax.jit(lambda p, b: chunked.apply({"params": p}, b, train=False))(params, batch)
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
  train = jax.jit(lambda p, b, k: chunked.apply({"params": p}, b, train=True, rngs={"dropout": k})[0])
  a = train(params, batch, jax.random.PRNGKey(1))
  b = train(params, batch, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, train(params, batch, jax.random.PRNGKey(2)))  # the dropout is on
