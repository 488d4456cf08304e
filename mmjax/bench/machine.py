"""The machine a benchmark ran on, the peak FLOP/s of its device, and where results are written.

:func:`machine` is recorded with every benchmark result; :func:`peak_tflops` gives the dense peak of a
device kind (a table for known accelerators, an estimate from ``/proc/cpuinfo`` for the CPU backend);
:func:`write_result` is the one way a benchmark writes its JSON (one file per benchmark, device kind and
date, under ``benchmarks/results``).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

from mmjax.hardware import PEAKS, cpu_info, device_peak, peak_tflops  # noqa: F401  (re-exported)

# Default results directory of every benchmark, relative to the current working directory (run from the
# repository root to add to ``benchmarks/results`` there); ``--out`` overrides it.
DEFAULT_OUT_DIR = Path("benchmarks") / "results"

def out_dir(path: str | os.PathLike | None = None) -> Path:
  """The results directory (``path`` or :data:`DEFAULT_OUT_DIR`), created if missing."""
  out = Path(path) if path is not None else DEFAULT_OUT_DIR
  out.mkdir(parents=True, exist_ok=True)
  return out


def machine(device=None, cpu: dict | None = None) -> dict:
  """Devices, library versions, CPU, ``XLA_FLAGS`` and the 1-minute load average of this machine.

  Keys: ``device_kind``, ``platform``, ``device_count``, ``process_count``, ``jax``, ``jaxlib``, ``flax``,
  ``optax``, ``python``, ``cpu_model``, ``cpu_cores`` (``os.cpu_count()``), ``cpu_cores_usable`` (affinity
  mask), ``cpu_mhz``, ``xla_flags``, ``load_avg_1m`` (``None`` where unavailable).
  """
  import flax
  import jax
  import jaxlib
  import optax

  device = jax.devices()[0] if device is None else device
  cpu = cpu_info() if cpu is None else cpu
  return {
      "device_kind": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "python": platform.python_version(),
      "cpu_model": cpu.get("model"),
      "cpu_cores": cpu.get("cores_total"),
      "cpu_cores_usable": cpu.get("cores"),
      "cpu_mhz": cpu.get("mhz"),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_avg_1m": load_average(),
  }


def load_average() -> float | None:
  """The 1-minute load average, or ``None`` where the OS has none."""
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):
    return None


def device_slug(device_kind: str) -> str:
  """A file-name-safe form of a device kind (``"NVIDIA H200"`` -> ``"nvidia-h200"``)."""
  return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "device"


def result_path(out: str | os.PathLike | None, benchmark: str, device_kind: str) -> Path:
  """``<out>/<benchmark>-<device>-<date>.json`` (the folder is created)."""
  date = datetime.date.today().isoformat()
  return out_dir(out) / f"{benchmark}-{device_slug(device_kind)}-{date}.json"


def write_result(out: str | os.PathLike | None, benchmark: str, key: str, machine_info: dict,
                 result: dict) -> Path:
  """Merges ``result`` under ``key`` into today's results file of ``benchmark`` for this machine's device
  kind (``machine_info["device_kind"]``), with a timestamp and the load average; returns its path. The file
  is replaced atomically, so a benchmark cut off mid-write keeps the results it had."""
  from mmjax.files import read_json, write_json

  path = result_path(out, benchmark, machine_info.get("device_kind", "device"))
  data = read_json(path, {}) or {}
  data["machine"] = machine_info
  data.setdefault("results", {})[key] = {
      **result, "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
      "load_average_1m": load_average(),
  }
  write_json(path, data)
  return path
