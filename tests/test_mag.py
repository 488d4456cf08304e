"""MAG (Rahman et al., ACL 2020) and its BERT: parity of our BERT with Hugging Face's on a tiny random
checkpoint and of our gate with the original MAG module (golden outputs committed; no torch needed), the
``hf_bert`` loader through ``config.init``, the gate's equations, the zero-gate identity for both text
models, and the word alignment."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.models.bert import BertConfig, BertModel
from mmjax.models.gpt2 import GPT2, GPT2Config
from mmjax.models.mag import MAG, MAGGate, align_uniform

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bert_tiny"
GOLDEN = Path(__file__).resolve().parent / "data" / "mag_original_golden.npz"
TINY_BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16, add_pooling_layer=True)
BERT_NO_POOLER = TINY_BERT.replace(add_pooling_layer=False)
TINY_GPT2 = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=3, n_head=2)


def test_bert_matches_hugging_face_layer_by_layer():
  """Our BERT with the imported tiny checkpoint against the PyTorch BertModel's golden outputs: the embedding
  output, every layer's hidden states (valid tokens of a padded batch) and the pooler, to 1e-5."""
  from mmjax.models.convert.hf_bert import load_hf_bert

  model, params = load_hf_bert(FIXTURE)
  assert model.config.add_pooling_layer and model.config.num_hidden_layers == 2
  golden = np.load(FIXTURE / "hf_outputs.npz")
  ids, types, mask = golden["input_ids"], golden["token_type_ids"], golden["attention_mask"]
  assert not mask.all()  # the padded case is exercised
  variables = {"params": params}
  h = model.apply(variables, ids, token_type_ids=types, train=False, method="embed")
  np.testing.assert_allclose(h, golden["hidden_states"][0], atol=1e-5)
  for i in range(model.config.num_hidden_layers):
    h = model.apply(variables, h, attention_mask=mask, start=i, stop=i + 1, train=False, method="run_layers")
    np.testing.assert_allclose(np.asarray(h)[mask], golden["hidden_states"][i + 1][mask], atol=1e-5)
  hidden, pooled = model.apply(variables, ids, token_type_ids=types, attention_mask=mask, train=False)
  np.testing.assert_allclose(np.asarray(hidden)[mask], golden["hidden_states"][-1][mask], atol=1e-5)
  np.testing.assert_allclose(pooled, golden["pooler_output"], atol=1e-5)


def test_bert_param_tree_matches_the_module_and_every_param_has_logical_axes():
  from mmjax.models.convert.hf_bert import load_hf_bert

  model, params = load_hf_bert(FIXTURE)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32), train=False))
  leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  shapes = jax.tree_util.tree_map(lambda a: a.shape, nn.unbox(boxed)["params"])
  assert jax.tree_util.tree_map(np.shape, params) == shapes


def test_hf_bert_loader_initialises_mag_text_through_config_init(tiny_config, tmp_path):
  """config.init.format = "hf_bert" reaches the loader from the engine, and the fixture's weights land in
  MAG's ``text`` subtree (the rest of the model is freshly initialised)."""
  from mmjax.models.convert.hf_bert import load_hf_bert
  from mmjax.train import build_run

  fixture_bert = ["model.kwargs.bert.vocab_size=96", "model.kwargs.bert.hidden_size=16",
                  "model.kwargs.bert.num_hidden_layers=2", "model.kwargs.bert.num_attention_heads=2",
                  "model.kwargs.bert.intermediate_size=32", "model.kwargs.bert.max_position_embeddings=24",
                  "model.kwargs.bert.type_vocab_size=2", "model.kwargs.bert.add_pooling_layer=true",
                  "model.kwargs.pool=cls"]
  cfg = tiny_config("mag_digits", overrides=[*fixture_bert, "checkpoint_every=0", "eval_every=0",
                                             "async_checkpoints=false", "init.format=hf_bert",
                                             f"init.path={FIXTURE}", "init.target=text"])
  run = build_run(cfg, tmp_path / "run", jax.devices()[:1])
  state = jax.device_get(run.init())
  run.checkpointer.close()
  want = load_hf_bert(FIXTURE)[1]
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params["text"], want)
  assert set(state.params) == {"text", "MAG", "classifier"}


def _batch(rng, b=2, t=7, token=True):
  text = rng.integers(1, 50, size=(b, t)).astype(np.int32) if token else rng.normal(size=(b, t, 6))
  mask = np.ones((b, t), bool)
  mask[1, 5:] = False
  return {"text": text, "text_mask": mask, "audio": rng.normal(size=(b, t, 5)).astype(np.float32),
          "vision": rng.normal(size=(b, t, 3)).astype(np.float32)}


def _text_states(kind, text_params, batch, *, inject=None):
  """The text model alone on ``batch``: final hidden states, with ``inject(h)`` applied after the
  injection layer when given (eager, op by op, like the MAG call it is compared with)."""
  mask = batch["text_mask"]
  if kind == "bert":
    model = BertModel(BERT_NO_POOLER)
    h = model.apply(text_params, batch["text"], train=False, method="embed")
    run = lambda h, a, z: model.apply(text_params, h, attention_mask=mask, start=a, stop=z, train=False,  # noqa: E731
                                      method="run_layers")
  else:
    model = GPT2(TINY_GPT2)
    h = model.apply(text_params, batch["text"], attention_mask=mask, train=False, method="input_states")
    run = lambda h, a, z: model.apply(text_params, h, attention_mask=mask, start=a, stop=z, train=False,  # noqa: E731
                                      method="run_blocks")
  if inject is None:
    if kind == "bert":
      return model.apply(text_params, batch["text"], attention_mask=mask, train=False)[0]
    return model.apply(text_params, batch["text"], attention_mask=mask, train=False,
                       method="hidden_states")[0]
  h = inject(run(h, 0, 2))
  h = run(h, 2, None)
  return h if kind == "bert" else model.apply(text_params, h, method="final_norm")


def _zero_gates(params):
  """MAG's gate weights and biases (W_hv, W_ha) set to 0: both gates are ReLU(0) = 0, so H = 0 exactly."""
  out = jax.tree_util.tree_map(lambda x: x, params)
  for name in ("W_hv", "W_ha"):
    out["MAG"][name] = jax.tree_util.tree_map(jnp.zeros_like, params["MAG"][name])
  return out


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_zeroed_gates_give_the_text_models_outputs_bit_for_bit(kind):
  """With W_hv, W_ha (weights and biases) zero the displacement is exactly 0. Without MAG's LayerNorm
  (gate_layer_norm=False) the shift is the identity, so MAG's final text states equal the text model's
  alone bit for bit; with the original's LayerNorm (default) they equal the text model with that same
  LayerNorm inserted after the injection layer, bit for bit. Untouched gates change the states (the
  comparison can fail)."""
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  for layer_norm in (False, True):
    mag = MAG(output_dim=3, text_model=kind, bert=BERT_NO_POOLER, lm=TINY_GPT2, injection_layer=2,
              gate_layer_norm=layer_norm, pool="mean")
    params = nn.unbox(mag.init(jax.random.PRNGKey(1), batch, train=False))["params"]
    params["MAG"]["W_a"]["bias"] = params["MAG"]["W_a"]["bias"] + 0.5  # H would not be 0 through a bias
    zeroed = _zero_gates(params)
    _, aux = mag.apply({"params": zeroed}, batch, train=False)
    text_params = {"params": zeroed["text"]}
    if layer_norm:
      ln, ln_params = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False), zeroed["MAG"]["LayerNorm"]
      want = _text_states(kind, text_params, batch,
                          inject=lambda h, ln=ln, ln_params=ln_params: ln.apply({"params": ln_params}, h))
    else:
      want = _text_states(kind, text_params, batch)
    np.testing.assert_array_equal(np.asarray(aux["hidden"]), np.asarray(want))
    _, aux_live = mag.apply({"params": params}, batch, train=False)
    assert np.abs(np.asarray(aux_live["hidden"]) - np.asarray(want)).max() > 1e-3


def test_gate_equations_and_the_norm_bound():
  """MAGGate against the equations in numpy with random parameters: gates, displacement, alpha =
  min(||Z|| / (||H|| + eps) * beta, 1), LayerNorm(Z + alpha H); and ||alpha H|| <= beta ||Z||."""
  rng = np.random.default_rng(3)
  z, v, a = (rng.normal(size=(2, 5, k)).astype(np.float32) for k in (8, 3, 4))
  for beta in (1e-3, 0.5, 4.0):
    gate = MAGGate(beta_shift=beta, dropout=0.5)
    params = nn.unbox(jax.jit(lambda g=gate: g.init(jax.random.PRNGKey(0), z, v, a, train=False))())["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32), params)
    out, alpha = jax.jit(lambda p, g=gate: g.apply({"params": p}, z, v, a, train=False))(params)
    p = jax.tree_util.tree_map(np.asarray, params)
    lin = lambda n, x, p=p: x @ p[n]["kernel"] + p[n]["bias"]  # noqa: E731
    g_v = np.maximum(lin("W_hv", np.concatenate([v, z], -1)), 0)
    g_a = np.maximum(lin("W_ha", np.concatenate([a, z], -1)), 0)
    h = g_v * lin("W_v", v) + g_a * lin("W_a", a)
    want_alpha = np.minimum(np.linalg.norm(z, axis=-1) / (np.linalg.norm(h, axis=-1) + 1e-6) * beta, 1.0)
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-5)
    s = z + want_alpha[..., None] * h
    s = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, s * p["LayerNorm"]["scale"] + p["LayerNorm"]["bias"], atol=1e-5)
    shift = np.linalg.norm(want_alpha[..., None] * h, axis=-1)
    assert (shift <= beta * np.linalg.norm(z, axis=-1) * (1 + 1e-5)).all()
    assert 0 < alpha.min() <= alpha.max() <= 1


def test_gate_matches_the_original_code():
  """``tests/data/mag_original_golden.npz`` (scripts/make_mag_golden.py): the original PyTorch ``MAG`` module
  with random parameters, in eval mode, for beta_shift 1.0 and 0.05 (alpha clipped at 1 for some words and
  not for others); our MAGGate with the same parameters (Linear weights transposed) gives its outputs."""
  z = np.load(GOLDEN)
  p = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  params = {n: {"kernel": p[f"{n}.weight"].T, "bias": p[f"{n}.bias"]} for n in ("W_hv", "W_ha", "W_v", "W_a")}
  params["LayerNorm"] = {"scale": p["LayerNorm.weight"], "bias": p["LayerNorm.bias"]}
  clipped = []
  for beta in (1.0, 0.05):  # the golden file's betas
    gate = MAGGate(beta_shift=beta, dropout=0.5)
    out, alpha = jax.jit(lambda q, g=gate: g.apply({"params": q}, z["text"], z["visual"], z["acoustic"],
                                                   train=False))(params)
    np.testing.assert_allclose(out, z[f"output/{beta}"], atol=2e-5)
    clipped.append(np.asarray(alpha) == 1.0)
  assert np.concatenate(clipped).any() and not np.concatenate(clipped).all()  # both branches of the min


def test_gate_gradients_are_finite_when_the_displacement_is_zero():
  """The original replaces ||H|| = 0 by 1; our safe norm gives the same value and finite gradients."""
  z, v, a = jnp.ones((1, 2, 4)), jnp.ones((1, 2, 3)), jnp.ones((1, 2, 3))
  gate = MAGGate()
  params = nn.unbox(gate.init(jax.random.PRNGKey(0), z, v, a, train=False))["params"]
  params = _zero_gates({"MAG": params})["MAG"]
  loss = lambda p: jnp.sum(gate.apply({"params": p}, z, v, a, train=False)[0] ** 2)  # noqa: E731
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  _, alpha = gate.apply({"params": params}, z, v, a, train=False)
  np.testing.assert_allclose(alpha, np.minimum(2.0 / (1 + 1e-6), 1.0))


def test_uniform_alignment_known_answers():
  """8 valid frames onto 4 words: pairs of frames averaged; 2 frames onto 4 words: each frame twice; one
  step (an image) to every word; padded words get 0; a word-aligned modality passes unchanged."""
  x = np.arange(10, dtype=np.float32)[None, :, None].repeat(2, 0)  # frames 0..9
  x_mask = np.array([[True] * 8 + [False] * 2, [True] * 2 + [False] * 8])
  t_mask = np.array([[True] * 4 + [False], [True] * 4 + [False]])
  got = np.asarray(align_uniform(jnp.asarray(x), jnp.asarray(x_mask), jnp.asarray(t_mask)))[..., 0]
  np.testing.assert_allclose(got, [[0.5, 2.5, 4.5, 6.5, 0], [0, 0, 1, 1, 0]])
  one = np.asarray(align_uniform(jnp.full((2, 1, 3), 7.0), None, jnp.asarray(t_mask)))
  np.testing.assert_allclose(one[:, :4], 7.0)
  np.testing.assert_allclose(one[:, 4], 0.0)
  mag = MAG(output_dim=2, text_model="bert", bert=TINY_BERT, pool="mean")
  batch = _batch(np.random.default_rng(0))
  assert mag._word_aligned(batch, "audio", jnp.asarray(batch["text_mask"])) is batch["audio"]


def test_mag_takes_word_features_in_place_of_tokens_and_checks_its_fields():
  """Float text (GloVe-like) goes through text_proj; bad fields are ValueErrors that say what to change."""
  rng = np.random.default_rng(0)
  batch = _batch(rng, token=False)
  batch["text"] = batch["text"].astype(np.float32)
  mag = MAG(output_dim=1, text_model="bert", bert=TINY_BERT)
  variables = jax.jit(lambda: mag.init(jax.random.PRNGKey(0), batch, train=False))()
  # the word embeddings exist (unused) so that a BERT checkpoint still grafts onto ``text``
  assert "text_proj" in variables["params"] and "word_embeddings" in variables["params"]["text"]["embeddings"]
  gpt = jax.eval_shape(lambda: MAG(output_dim=1, text_model="gpt2", lm=TINY_GPT2).init(
      jax.random.PRNGKey(0), batch, train=False))
  assert "wte" in gpt["params"]["text"]
  out, _ = jax.jit(lambda v: mag.apply(v, batch, train=False))(variables)
  assert out.shape == (2, 1) and np.isfinite(out).all()
  tok = _batch(rng)
  for kwargs, match in [({"text_model": "xlnet"}, "text_model"), ({"injection_layer": 4}, "outside 0..3"),
                        ({"pool": "cls", "bert": BERT_NO_POOLER}, "add_pooling_layer"),
                        ({"static_modalities": ("image",)}, "static_modalities")]:
    with pytest.raises(ValueError, match=match):
      MAG(**{"bert": TINY_BERT, **kwargs}).init(jax.random.PRNGKey(0), tok, train=False)
  short = dict(tok, audio=tok["audio"][:, :4])
  with pytest.raises(ValueError, match="one audio vector per word"):
    MAG(bert=TINY_BERT, alignment="error").init(jax.random.PRNGKey(0), short, train=False)


def test_mag_mosi_config_builds_bert_base_shapes():
  """configs/mag_mosi.py: MAG-BERT with bert-base shapes over the aligned MulT features (abstractly); its
  ``frozen`` variant's optimizer mask freezes exactly the BERT parameters."""
  from mmjax.config import get_config
  from mmjax.train.optim import path_mask

  from .conftest import CONFIGS

  cfg = get_config(str(CONFIGS / "mag_mosi.py"))
  model = models.build("mag", dict(cfg.model.kwargs))
  assert (model.bert.hidden_size, model.bert.num_hidden_layers, model.injection_layer) == (768, 12, 0)
  batch = {"text": np.zeros((2, 50, 300), np.float32), "audio": np.zeros((2, 50, 5), np.float32),
           "vision": np.zeros((2, 50, 20), np.float32), "text_mask": np.ones((2, 50), bool)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
  params = nn.unbox(shapes)["params"]
  assert params["text"]["layer_11"]["output"]["dense"]["kernel"].shape == (3072, 768)
  assert cfg.init.format == "hf_bert" and cfg.init.target == "text" and not cfg.optimizer.frozen
  frozen = get_config(str(CONFIGS / "mag_mosi.py") + ":frozen").optimizer.frozen
  mask = path_mask(params, frozen)
  assert all(jax.tree_util.tree_leaves(mask["text"]))
  assert not any(jax.tree_util.tree_leaves({k: v for k, v in mask.items() if k != "text"}))


@pytest.mark.slow  # two jitted gradient compilations per text model (tens of seconds on 2 cores)
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_remat_gives_the_same_loss_and_gradients(kind):
  """Rematerialised text blocks (remat="full") change neither the parameter tree nor the loss and
  gradients (BERT's post-LN layers and GPT-2's blocks, on both sides of the gate)."""
  batch = _batch(np.random.default_rng(2))
  labels = jnp.array([0, 2])

  def loss_and_grads(remat):
    mag = MAG(output_dim=3, text_model=kind, bert=BERT_NO_POOLER, lm=TINY_GPT2, injection_layer=1,
              pool="mean", remat=remat)
    params = nn.unbox(mag.init(jax.random.PRNGKey(0), batch, train=False))["params"]

    def loss(p):
      out, _ = mag.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], axis=1))

    return jax.jit(jax.value_and_grad(loss))(params)

  (l0, g0), (l1, g1) = loss_and_grads("none"), loss_and_grads("full")
  assert jax.tree_util.tree_structure(g0) == jax.tree_util.tree_structure(g1)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
