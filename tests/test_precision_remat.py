"""``config.precision`` (bfloat16 compute over float32 parameters) and ``config.remat`` (rematerialised
blocks) for every registered model.

* bfloat16: every model's train step, traced (no compile), keeps parameters, optimizer state, gradients and
  the loss in float32 while its matmuls run in bfloat16; the step runs (compiled) for two models here and
  for every model with ``-m slow``.
* remat: the same loss and gradients with and without rematerialisation (Encoder, MulT's scanned
  crossmodal layers, GPT-2 blocks); parameter trees unchanged; KV-cached decoding through rematted GPT-2
  blocks gives the same tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.config import ConfigError, get_config
from mmjax.layers.remat import MODES
from mmjax.train.step import train_step
from tests.conftest import CONFIGS
from tests.test_sharding import engine_config, fixed_batches

ALL_MODELS = sorted(models.names())


def _bf16_run(name, data_dir, tmp_path):
  from mmjax.train.run import build_run

  config = engine_config(name, data_dir, overrides=["precision=bfloat16"])
  run = build_run(config, tmp_path, jax.devices()[:1])
  return config, run


def _eqns(jaxpr):
  """Every equation of a closed jaxpr, sub-jaxprs (scan, remat, custom_vjp, pjit) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for j in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(j, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          yield from _eqns(inner)
        elif hasattr(j, "eqns"):
          yield from _eqns(j)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bfloat16_step_keeps_float32_state_and_computes_in_bfloat16(name, data_dir, tmp_path):
  config, run = _bf16_run(name, data_dir, tmp_path)
  assert run.model.dtype == jnp.bfloat16
  state_leaves = jax.tree_util.tree_leaves(run.abstract_state.params) + jax.tree_util.tree_leaves(
      run.abstract_state.opt_state)
  assert {x.dtype for x in state_leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
  batch = fixed_batches(config, 1)[0]
  step = functools.partial(train_step, model=run.model, optimizer=run.optimizer, task=run.task)
  closed = jax.make_jaxpr(step)(run.abstract_state, batch)
  new_state, metrics = jax.eval_shape(step, run.abstract_state, batch)
  assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32
  assert all(a.dtype == b.dtype for a, b in zip(jax.tree_util.tree_leaves(new_state.params),
                                                 jax.tree_util.tree_leaves(run.abstract_state.params),
                                                 strict=True))
  dots = [e for e in _eqns(closed.jaxpr) if e.primitive.name == "dot_general"]
  operand_dtypes = [tuple(v.aval.dtype for v in e.invars) for e in dots]
  bf16 = [d for d in operand_dtypes if d == (jnp.bfloat16, jnp.bfloat16)]
  # the matmuls run in bfloat16 (forward and backward); a few float32 ones remain where the model computes
  # in float32 on purpose (MMD kernels, mixtures of the token table, probabilities of the prefix head)
  assert len(bf16) >= 0.75 * len(dots) and len(bf16) > 0, (name, len(bf16), len(dots))


def _run_bf16_steps(name, data_dir, tmp_path):
  from mmjax.train.step import jit_train_step

  config, run = _bf16_run(name, data_dir, tmp_path)
  state = run.init()
  step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding, run.mesh)
  losses = []
  for batch in fixed_batches(config, 2):
    state, metrics = step(state, run.global_batch(batch))
    losses.append(float(metrics["loss"]))
  run.close()
  assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype("float32")}
  assert np.isfinite(losses).all(), losses


@pytest.mark.parametrize("name", ["late_fusion", pytest.param("causal_lm", marks=pytest.mark.slow)])
def test_bfloat16_steps_run(name, data_dir, tmp_path):
  _run_bf16_steps(name, data_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n not in ("late_fusion", "causal_lm")])
def test_bfloat16_steps_run_for_every_model(name, data_dir, tmp_path):
  _run_bf16_steps(name, data_dir, tmp_path)


def test_precision_and_remat_are_validated():
  path = str(CONFIGS / "late_fusion_digits.py")
  assert get_config(path, ["precision=bf16"]).precision == "bfloat16"
  with pytest.raises(ConfigError, match="precision 'float8' is not known.*Valid names: float32, bfloat16"):
    get_config(path, ["precision=float8"])
  with pytest.raises(ConfigError, match="remat 'dots' is not known.*Valid names: none, full, .*_saveable"):
    get_config(path, ["remat=dots"])
  assert get_config(path, ["remat=dots_saveable"]).remat == "dots_saveable"
  assert {"none", "full", "dots_saveable", "nothing_saveable"} <= set(MODES)
  assert "save_only_these_names" not in MODES  # a factory of policies, not a policy


# --- remat: same loss and gradients ------------------------------------------------------------------------

B = 4


def _late_fusion(remat):
  model = models.build("late_fusion", {"modalities": ("audio", "text"), "vocab_size": 11, "width": 16,
                                       "num_layers": 2, "num_heads": 2, "dropout": 0.1, "remat": remat})
  rng = np.random.default_rng(0)
  batch = {"audio": rng.standard_normal((B, 6, 5)).astype(np.float32), "text": rng.integers(0, 11, (B, 4)),
           "audio_mask": np.arange(6)[None] < rng.integers(2, 7, (B, 1)), "label": rng.integers(0, 10, B)}
  return model, batch, lambda out, batch: jnp.mean(jax.nn.log_softmax(out)[jnp.arange(B), batch["label"]])


def _mult(remat):
  # one target: two crossmodal transformers and a memory transformer (each scanned), a third of the compile
  model = models.build("mult", {"width": 8, "num_layers": 2, "num_heads": 2, "kernel_sizes": (1, 3, 1),
                                "target_modalities": ("text",), "remat": remat})
  rng = np.random.default_rng(1)
  lengths, widths = {"text": 5, "audio": 7, "vision": 6}, {"text": 6, "audio": 3, "vision": 4}
  batch = {k: rng.standard_normal((B, t, widths[k])).astype(np.float32) for k, t in lengths.items()}
  batch["audio_mask"] = np.arange(7)[None] < rng.integers(3, 8, (B, 1))
  return model, batch, lambda out, batch: jnp.mean(out ** 2)


def _causal_lm(remat):
  lm = {"vocab_size": 32, "n_positions": 16, "n_embd": 16, "n_layer": 2, "n_head": 2, "resid_pdrop": 0.1}
  model = models.build("causal_lm", {"lm": lm, "bos_id": 1, "text_key": "tokens", "remat": remat})
  batch = {"tokens": np.random.default_rng(2).integers(0, 32, (B, 8)).astype(np.int32)}
  return model, batch, lambda out, batch: jnp.mean(jax.nn.logsumexp(out, -1))


@pytest.mark.parametrize("case, modes", [(_late_fusion, ("full",)), (_mult, ("dots_saveable",)),
                                         (_causal_lm, ("full",))], ids=["late_fusion", "mult", "causal_lm"])
def test_remat_gives_the_same_loss_and_gradients(case, modes):
  model, batch, reduce = case("none")
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  params = jax.jit(lambda: model.init(rngs, batch, train=False)["params"])()

  def loss_and_grads(m):
    def loss(p):
      out, _ = m.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
      return reduce(out, batch)
    return jax.jit(jax.value_and_grad(loss))(params)

  want_loss, want_grads = loss_and_grads(model)
  for mode in modes:
    rematted, _, _ = case(mode)
    # the same parameter tree (names and shapes): checkpoints load whatever remat is
    shapes = jax.eval_shape(lambda m=rematted: m.init(rngs, batch, train=False)["params"])
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    loss, grads = loss_and_grads(rematted)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(want_grads),
                            strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=f"{mode} {jax.tree_util.keystr(path)}")


def test_cached_decoding_through_rematted_gpt2_blocks():
  """Evaluators decode with the model the training config built: remat must not break the KV cache."""
  from mmjax import sampling
  from mmjax.models import gpt2

  cfg = gpt2.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2).no_dropout()
  prompt = np.random.default_rng(4).integers(0, 32, (2, 4)).astype(np.int32)
  plain, rematted = gpt2.GPT2(cfg), gpt2.GPT2(cfg, remat="full")
  params = jax.jit(lambda: plain.init(jax.random.PRNGKey(0), prompt, train=False)["params"])()
  want = sampling.generate(plain, params, prompt, max_new_tokens=4)
  got = sampling.generate(rematted, params, prompt, max_new_tokens=4)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
