"""Test setup: 8 virtual CPU devices (set before JAX loads), a shared prepared digits_av, tiny configs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

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
