"""The hardware a run or benchmark is on: the CPU, and the dense peak FLOP/s of a device kind, which turns
measured FLOP/s into a fraction of the peak (MFU) in the training log and in the benchmarks."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Dense peak TFLOP/s by device-kind substring: (bfloat16, float32). The first matching entry wins, so more
# specific names come first ("H100 PCIe" before "H100").
PEAKS: dict[str, tuple[float, float]] = {
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "H200": (989.0, 67.0),
    "A100": (312.0, 19.5),
}


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
