"""Test setup: 8 virtual CPU devices (set before JAX loads), a shared prepared digits_av, tiny configs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
  # LLVM -O0: compiles ~2x faster on CPU; the tests run few steps, so compile time dominates.
  flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
# One persistent compilation cache for the session (subprocesses inherit it through the environment):
# identical train steps compiled by several tests, or by the CLI in a subprocess, compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data directory with digits_av prepared once for the whole session."""
  from mmjax.data import pipeline

  path = tmp_path_factory.mktemp("tfds")
  pipeline.prepare("digits_av", str(path))
  return str(path)


@pytest.fixture
def tiny_config(data_dir):
  """Factory: a validated ``runlocal`` digits config (late fusion by default) reading ``data_dir``."""
  from mmjax.config import get_config

  def make(name="late_fusion_digits", arg="runlocal", overrides=()):
    return get_config(f"{CONFIGS / (name + '.py')}:{arg}", [f"data.data_dir={data_dir}", *overrides])

  return make


# Files that take longest, heaviest first (measured with `--durations`; CPU compile time dominates). With
# `--dist loadfile --no-loadscope-reorder` (pyproject's addopts) the workers take whole files in this order,
# so the long ones start first and the short ones fill in at the end, instead of one long file running
# alone on one worker while the other idles (xdist's default order is by number of tests per file).
HEAVY_FIRST = (
    "test_sharding.py", "test_cross_modal.py", "test_multiprocess.py", "test_frozen.py", "test_contract.py",
    "test_cli.py", "test_engine.py", "test_train.py", "test_pretrained.py", "test_vae.py",
    "test_bad_inputs.py", "test_mag.py", "test_clip.py", "test_prng.py", "test_fusion.py", "test_models.py",
    "test_tasks.py", "test_evaluators.py", "test_mctn.py", "test_mbt.py", "test_flops.py",
)


def pytest_collection_modifyitems(session, config, items):
  """Runs the files of :data:`HEAVY_FIRST` first, in that order; the rest keep their order."""
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order
