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

# Default results directory of every benchmark, relative to the current working directory (run from the
# repository root to add to ``benchmarks/results`` there); ``--out`` overrides it.
DEFAULT_OUT_DIR = Path("benchmarks") / "results"

# Dense peak TFLOP/s by device-kind substring: (bfloat16, float32). The first matching entry wins, so more
# specific names come first ("H100 PCIe" before "H100").
PEAKS: dict[str, tuple[float, float]] = {
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "H200": (989.0, 67.0),
    "A100": (312.0, 19.5),
}


def out_dir(path: str | os.PathLike | None = None) -> Path:
  """The results directory (``path`` or :data:`DEFAULT_OUT_DIR`), created if missing."""
  out = Path(path) if path is not None else DEFAULT_OUT_DIR
  out.mkdir(parents=True, exist_ok=True)
  return out


def cpu_info() -> dict:
  """CPU ``model``, ``mhz`` and ``flags`` from ``/proc/cpuinfo``; ``cores`` usable by this process.

  ``cores_total`` is ``os.cpu_count()``; ``cores`` is the affinity mask's size (what a job may use).
  Fields that cannot be read are ``None`` (``flags``: empty).
  """
  info = {"model": None, "mhz": None, "flags": []}
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      key, _, val = line.partition(":")
      key = key.strip()
      if key == "model name" and info["model"] is None:
        info["model"] = val.strip()
      elif key == "cpu MHz" and info["mhz"] is None:
        info["mhz"] = float(val)
      elif key == "flags" and not info["flags"]:
        info["flags"] = val.split()
  except (OSError, ValueError):
    pass
  if info["model"] is None:
    info["model"] = platform.processor() or None
  info["cores_total"] = os.cpu_count()
  info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return info


def peak_tflops(device_kind: str, platform_name: str | None = None, cpu: dict | None = None) -> dict:
  """Dense peak TFLOP/s per dtype of a device kind: ``{"bfloat16", "float32", "source"}``.

  * A kind containing a :data:`PEAKS` name (e.g. ``"NVIDIA H100 80GB HBM3"``): the table's numbers.
  * The CPU backend (``platform_name == "cpu"``) with a known clock: an ESTIMATE, cores x MHz x float32
    FLOPs/cycle/core (64 with AVX-512, 32 with AVX2+FMA, else 8), the same for bfloat16 (assumed no
    faster without AMX/avx512_bf16); ``source`` says it is an estimate and how it was made. ``cpu``
    defaults to :func:`cpu_info`.
  * Anything else: ``None`` for both dtypes, ``source`` naming the unknown kind.
  """
  for name, (bf16, fp32) in PEAKS.items():
    if name in device_kind:
      return {"bfloat16": bf16, "float32": fp32, "source": f"table ({name}, dense)"}
  if platform_name == "cpu":
    cpu = cpu_info() if cpu is None else cpu
    if cpu.get("mhz") and cpu.get("cores"):
      flags = set(cpu.get("flags") or ())
      per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
      peak = cpu["cores"] * cpu["mhz"] * 1e6 * per_cycle / 1e12
      return {"bfloat16": peak, "float32": peak,
              "source": f"estimate: {cpu['cores']} cores x {cpu['mhz']:.0f} MHz x {per_cycle} FLOP/cycle "
                        "(float32 FMA vectors; bf16 assumed no faster)"}
  return {"bfloat16": None, "float32": None, "source": f"unknown device kind {device_kind!r}"}


def device_peak(device=None, cpu: dict | None = None) -> dict:
  """:func:`peak_tflops` of a JAX device (default: the first device)."""
  if device is None:
    import jax

    device = jax.devices()[0]
  return peak_tflops(device.device_kind, device.platform, cpu)


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
