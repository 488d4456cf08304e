"""``config.prng_impl``: every PRNG implementation trains deterministically and resumes bit-exactly."""

import jax
import numpy as np
import pytest

from mmjax.config import ConfigError, default_config
from mmjax.data import pipeline
from mmjax.train import CheckpointError
from mmjax.train.run import build_run, init_state, restore_run
from mmjax.train.state import DEFAULT_PRNG_IMPL, PRNG_IMPLS
from mmjax.train.step import jit_train_step

STEPS = 4  # updates in all; the interrupted run checkpoints after 2


def _steps(step, state, batch, n):
  for _ in range(n):
    state, _ = step(state, batch)
  return jax.device_get(state)


def _same(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# unsafe_rbg differs from rbg only in how keys are split and folded: -m slow.
@pytest.mark.parametrize("impl", [pytest.param(i, marks=pytest.mark.slow) if i == "unsafe_rbg" else i
                                  for i in PRNG_IMPLS])
def test_each_prng_impl_is_deterministic_and_resumes_bit_exactly(impl, tiny_config, tmp_path):
  # One modality (text) keeps the step small: one compile per implementation, shared by every run below.
  config = tiny_config(arg="runlocal,text", overrides=[f"prng_impl={impl}", "async_checkpoints=false"])
  devices = jax.devices()[:1]
  run = build_run(config, tmp_path / "a", devices)
  init = run.init
  step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding, run.mesh,
                        prng_impl=impl)
  batch = run.global_batch(pipeline.example_from_features(config.data, config.batch_size, seed=0))
  start = jax.device_get(init())
  threefry = init_state(run.model, run.optimizer, jax.device_get(batch), config.seed, "threefry")
  _same(start.params, threefry.params)  # parameters are drawn with threefry whatever prng_impl is
  first = _steps(step, init(), batch, STEPS)
  assert first.rng.shape == ((2,) if impl == "threefry" else (4,))
  _same(first, _steps(step, init(), batch, STEPS))  # the same seed gives the same run
  run.close()

  run = build_run(config, tmp_path / "b", devices)
  state = _steps(step, init(), batch, STEPS // 2)
  run.checkpointer.save(STEPS // 2, state, force=True)
  run.close()
  run = build_run(config, tmp_path / "b", devices)  # a new process, as after a crash
  resumed = _steps(step, run.restore_or_init(), batch, STEPS - STEPS // 2)
  run.close()
  _same(first, resumed)

  other = config.copy_and_resolve_references()
  other.prng_impl = "rbg" if impl != "rbg" else "unsafe_rbg"
  run = build_run(other, tmp_path / "b", devices, read_only=True)
  with pytest.raises(CheckpointError, match=f"holds a {impl} PRNG key.*--config.prng_impl={impl}"):
    run.restore()
  run.close()
  # Evaluation (restore_run) takes the implementation from the run's own config.json, whatever it is given.
  (tmp_path / "b" / "config.json").write_text(config.to_json_best_effort())
  _, restored = restore_run(tmp_path / "b", config=other, devices=devices)
  _same(jax.device_get(restored), state)


def test_the_config_default_is_the_engine_default():
  assert default_config().prng_impl == DEFAULT_PRNG_IMPL


def test_unknown_prng_impl_lists_the_valid_names(tiny_config):
  with pytest.raises(ConfigError, match="prng_impl 'philox' is not known.*threefry, rbg, unsafe_rbg"):
    tiny_config(overrides=["prng_impl=philox"])
