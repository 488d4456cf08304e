"""Sharding: every registered model's parameters carry logical axis names, the config's rules place them on
a (data, fsdp, tensor) mesh, and training gives the same losses on any mesh as on one device; checkpoints
restore onto a mesh of another shape.

Each model at its runlocal config (tests/test_contract.py: CONFIG_OF) trains 5 float32 steps on fixed
batches through the engine's own jitted, sharded step on one device and on a mesh; the losses agree to 1e-5.
The default run checks every model's parameter placement on (2, 2, 2) abstractly, trains one model of
each kind on (2, 2, 2) and late fusion on every mesh; ``-m slow`` trains every model on every mesh.
"""

import jax
import numpy as np
import pytest

from mmjax import models

MESHES = {"8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2), "1x1x8": (1, 1, 8)}
OTHER_MESHES = [m for k, m in MESHES.items() if k != "2x2x2"]
mesh_id = lambda m: "x".join(map(str, m))  # noqa: E731
STEPS = 5


def engine_config(name, data_dir, mesh=(1, 1, 1), overrides=()):
  """The model's runlocal config on ``mesh`` without dropout: random bits cost most of the compile time on
  CPU, and random draws under sharding stay covered (the VAEs sample latents, MFM drops modalities)."""
  from mmjax.config import get_config
  from tests.conftest import CONFIGS
  from tests.test_contract import CONFIG_OF

  data, fsdp, tensor = mesh
  no_dropout = [f"model.kwargs.{k}=0.0" for k, v in models.fields(name).items()
                if "dropout" in k and isinstance(v, float)]
  return get_config(str(CONFIGS / CONFIG_OF[name]), [
      f"data.data_dir={data_dir}", f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
      "init.format=", "init.path=",  # Frozen's runlocal grafts a trained LM: random parameters here
      "async_checkpoints=false", *no_dropout, *overrides])


def fixed_batches(config, steps=STEPS):
  """``steps`` numpy batches of random features (every row its own draw) with random valid lengths."""
  from mmjax.data import pipeline

  rng = np.random.default_rng(0)
  out = []
  for s in range(steps):
    rows = [pipeline.example_from_features(config.data, 1, seed=100 * s + i)
            for i in range(config.batch_size)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    for k, v in batch.items():
      if k.endswith("_mask") and v.ndim == 2:
        t = v.shape[1]
        batch[k] = np.arange(t)[None] < rng.integers(max(t // 2, 1), t + 1, (v.shape[0], 1))
    out.append(batch)
  return out


def train_steps(config, workdir, devices, batches):
  """``(run, state, losses)`` after one jitted, sharded step per batch (the engine's own step)."""
  from mmjax.train.run import build_run
  from mmjax.train.step import jit_train_step

  run = build_run(config, workdir, devices)
  state = run.init()
  step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding, run.mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, run.global_batch(batch))
    losses.append(metrics["loss"])
  run.close()
  return run, state, np.asarray(jax.device_get(losses))


_ONE_DEVICE = {}  # model -> losses on one device, computed once per session


def one_device_losses(name, data_dir, tmp_path):
  if name not in _ONE_DEVICE:
    config = engine_config(name, data_dir)
    _, _, _ONE_DEVICE[name] = train_steps(config, tmp_path / "one", jax.devices()[:1], fixed_batches(config))
  return _ONE_DEVICE[name]


def check_mesh(name, mesh, data_dir, tmp_path):
  config = engine_config(name, data_dir, mesh)
  run, state, losses = train_steps(config, tmp_path / "mesh", jax.devices()[:8], fixed_batches(config))
  assert dict(run.mesh.shape) == dict(zip(("data", "fsdp", "tensor"), mesh, strict=True))
  np.testing.assert_allclose(losses, one_device_losses(name, data_dir, tmp_path), rtol=1e-5, atol=1e-5)
  assert np.isfinite(losses).all()
  return run, state


def sharded_leaves(state):
  """``{path: leaf}`` of the parameters split over more than one device."""
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)
          if x.sharding.shard_shape(x.shape) != x.shape}


ALL_MODELS = sorted(models.names())


# Trained on (2, 2, 2) by default: a frozen GPT-2 (attention heads and MLPs over `tensor`) under a trained
# vision encoder. The rest (a VAE that samples latents among them, ~36 s): -m slow. MulT is among the rest
# because its (2, 2, 2) run stalled inside the jitted step twice in full 2-worker runs on 2 cores (once
# until XLA aborted the worker, once for over 10 minutes), while it passed alone five times out of five;
# not yet diagnosed (a collective rendezvous of the 8 virtual devices is the suspect).
DEFAULT_2X2X2 = ("frozen",)


def check_placement(state, name):
  sharded = sharded_leaves(state)
  assert sharded, f"{name}: no parameter is sharded on a (2, 2, 2) mesh"
  for path, x in sharded.items():
    names = {a for axes in x.sharding.spec if axes for a in ((axes,) if isinstance(axes, str) else axes)}
    assert names & {"fsdp", "tensor"}, path
    assert np.prod(x.sharding.shard_shape(x.shape)) < np.prod(x.shape), path


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_places_its_parameters_on_a_2x2x2_mesh(name, data_dir, tmp_path):
  """Abstractly (no compile): the shardings the engine gives the state split parameters over fsdp/tensor."""
  from mmjax.train.run import build_run

  run = build_run(engine_config(name, data_dir, (2, 2, 2)), tmp_path, jax.devices()[:8])
  abstract = jax.tree_util.tree_map(lambda sh, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                    run.state_shardings, run.abstract_state)
  check_placement(abstract, name)
  run.close()


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_2X2X2 else pytest.mark.slow)
                                  for n in ALL_MODELS])
def test_every_model_on_a_2x2x2_mesh_equals_one_device(name, data_dir, tmp_path):
  _, state = check_mesh(name, (2, 2, 2), data_dir, tmp_path)
  check_placement(state, name)


# -m slow: (8, 1, 1), pure data parallelism over 8 devices, is tests/test_train.py's sharded run; and
# (1, 1, 8): tensor parallelism runs by default in the (2, 2, 2) cases above, and a dimension that `tensor`
# does not divide (4 heads on 8) in test_tensor_and_fsdp_rules_place_the_parameters and the activation tests.
SLOW_MESHES = ((8, 1, 1), (1, 1, 8))


@pytest.mark.parametrize("mesh", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MESHES else m
                                  for m in OTHER_MESHES], ids=mesh_id)
def test_late_fusion_on_every_mesh_equals_one_device(mesh, data_dir, tmp_path):
  check_mesh("late_fusion", mesh, data_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", OTHER_MESHES, ids=mesh_id)
@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n != "late_fusion"])
def test_every_model_on_every_mesh_equals_one_device(name, mesh, data_dir, tmp_path):
  check_mesh(name, mesh, data_dir, tmp_path)


def test_tensor_and_fsdp_rules_place_the_parameters(data_dir, tmp_path):
  from mmjax.train.run import build_run

  run = build_run(engine_config("late_fusion", data_dir, (2, 2, 2)), tmp_path)
  enc = run.state_shardings.params["image_encoder"]["layer_0"]
  assert tuple(enc["fc1"]["kernel"].spec) == ("fsdp", "tensor")  # (embed, mlp)
  assert tuple(enc["attn"]["query"]["kernel"].spec) == ("fsdp", "tensor", None)  # (embed, heads, kv)
  assert tuple(enc["ln_mlp"]["scale"].spec) == (None,)  # norm: replicated
  # Adam's moments follow their parameters
  mu = run.state_shardings.opt_state
  assert any(tuple(s.spec) == ("fsdp", "tensor") for s in jax.tree_util.tree_leaves(mu))
  # rules from the config: mlp over fsdp and tensor, embed replicated
  cfg = engine_config("late_fusion", data_dir, (2, 2, 2), ["mesh.rules.mlp=fsdp,tensor", "mesh.rules.embed="])
  enc = build_run(cfg, tmp_path).state_shardings.params["image_encoder"]["layer_0"]
  assert tuple(enc["fc1"]["kernel"].spec) == (None, ("fsdp", "tensor"))
  # a dimension the mesh axes do not divide (4 heads over tensor = 8) stays replicated
  cfg = engine_config("late_fusion", data_dir, (1, 1, 8))
  enc = build_run(cfg, tmp_path).state_shardings.params["image_encoder"]["layer_0"]
  assert tuple(enc["attn"]["query"]["kernel"].spec)[1:] == (None, None)
  assert tuple(enc["fc1"]["kernel"].spec)[1:] == ("tensor",)


def test_checkpoint_saved_on_one_mesh_restores_on_another(data_dir, tmp_path):
  from mmjax.train.run import build_run

  saved = build_run(engine_config("late_fusion", data_dir, (8, 1, 1)), tmp_path)
  state = saved.init()
  state = jax.jit(lambda s: s.replace(params=jax.tree_util.tree_map(lambda x: x + 0.5, s.params)))(state)
  saved.checkpointer.save(1, state, force=True)
  saved.close()
  for mesh in ((2, 2, 2), (1, 2, 4)):
    run = build_run(engine_config("late_fusion", data_dir, mesh), tmp_path, read_only=True)
    restored = run.restore(1)
    run.close()
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(restored.params),
                            jax.tree_util.tree_leaves(state.params), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    want = jax.tree_util.tree_leaves(run.state_shardings.params)
    got = [x.sharding for x in jax.tree_util.tree_leaves(restored.params)]
    assert all(g.is_equivalent_to(w, x.ndim) for g, w, x in
               zip(got, want, jax.tree_util.tree_leaves(restored.params), strict=True))
    assert sharded_leaves(restored)
  # restore_run on one device, from a run whose mesh (2, 2, 2) needs eight: it falls back to one device
  from mmjax.train.run import restore_run

  run, restored = restore_run(tmp_path, 1, config=engine_config("late_fusion", data_dir, (2, 2, 2)),
                              devices=jax.devices()[:1])
  assert run.mesh.size == 1
  for a, b in zip(jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(state.params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- activations --------------------------------------------------------------------------------------------


def test_activation_constraints_follow_the_rules_and_only_inside_the_engine():
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P

  from mmjax.layers import axes
  from mmjax.train.mesh import parse_rules

  x = jax.numpy.ones((8, 5, 6))
  assert axes.constrain(x, axes.BATCH_LENGTH_MLP) is x  # a model applied on its own: untouched
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  with axes.activation_sharding(mesh, parse_rules()):
    mlp = jax.jit(lambda t: axes.constrain(t * 2, axes.BATCH_LENGTH_MLP))(x)
    odd = jax.jit(lambda t: axes.constrain(t * 2, axes.BATCH_LENGTH_MLP))(x[:, :, :3])  # 3 % tensor != 0
    with pytest.raises(ValueError, match="3 logical names"):
      axes.constrain(x[0], axes.BATCH_LENGTH_MLP)
  same = lambda a, spec: a.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), a.ndim)  # noqa: E731
  assert same(mlp, P(("data", "fsdp"), None, "tensor"))
  assert same(odd, P(("data", "fsdp"), None, None))
  with axes.activation_sharding(mesh, parse_rules({"activation_mlp": "", "activation_length": "tensor"})):
    other = jax.jit(lambda t: axes.constrain(t * 2, axes.BATCH_LENGTH_MLP))(x[:, :4])
  assert same(other, P(("data", "fsdp"), "tensor", None))


def test_the_engine_step_constrains_the_activations(data_dir, tmp_path, monkeypatch):
  """The jitted step of a transformer model on (2, 2, 2) carries the layers' sharding constraints."""
  from mmjax.layers import axes
  from mmjax.train.run import build_run
  from mmjax.train.step import jit_train_step

  run = build_run(engine_config("late_fusion", data_dir, (2, 2, 2)), tmp_path, jax.devices()[:8])
  batch = run.global_batch(fixed_batches(run.config, 1)[0])

  def constraints():
    step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                          run.mesh)
    text = step.lower(run.abstract_state, batch).as_text()
    return text.count("sharding_constraint") + text.count("@Sharding")  # Shardy or GSPMD lowering

  with_layers = constraints()
  monkeypatch.setattr(axes, "constrain", lambda x, names: x)
  assert with_layers > constraints()
  run.close()
