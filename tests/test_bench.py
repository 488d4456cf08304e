"""mmjax.bench: the machine description, the peak table, ``mmjax bench`` and a tiny attention measurement."""

import json

import pytest

from mmjax import cli
from mmjax.bench import attention, machine

MACHINE_KEYS = {"device_kind", "platform", "device_count", "process_count", "jax", "jaxlib", "flax", "optax",
                "python", "cpu_model", "cpu_cores", "cpu_cores_usable", "cpu_mhz", "xla_flags", "load_avg_1m"}


def test_machine_has_the_expected_keys():
  m = machine.machine()
  assert MACHINE_KEYS <= set(m)
  assert m["device_count"] >= 1 and m["platform"] == "cpu"
  json.dumps(m)  # recorded in the results JSON


def test_peak_table():
  h100 = machine.peak_tflops("NVIDIA H100 80GB HBM3", "gpu")
  assert h100["bfloat16"] == 989.0 and h100["float32"] == 67.0 and "table" in h100["source"]
  assert machine.peak_tflops("NVIDIA H100 PCIe", "gpu")["bfloat16"] == 756.0
  unknown = machine.peak_tflops("Some Future Accelerator", "gpu")
  assert unknown["bfloat16"] is None and unknown["float32"] is None and "unknown" in unknown["source"]
  cpu = {"mhz": 2000.0, "cores": 2, "flags": ["avx2", "fma"]}
  est = machine.peak_tflops("cpu", "cpu", cpu)
  assert est["float32"] == pytest.approx(2 * 2000e6 * 32 / 1e12) and est["source"].startswith("estimate")
  # a CPU whose clock is unknown has no estimate
  assert machine.peak_tflops("cpu", "cpu", {"mhz": None, "cores": 2, "flags": []})["float32"] is None


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "attention", "--help"],
                                  ["bench", "train_step", "--help"]])
def test_bench_help_exits_0(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 0
  assert "usage: mmjax bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bench"], ["bench", "nope"]])
def test_bench_usage_errors(argv):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2


def test_attention_measure_one_small_shape():
  peak = {"float32": 1.0, "bfloat16": 1.0}
  rec = attention.measure("xla", dict(attention.SMOKE_SHAPE), "fwd", reps=1, on_gpu=False, peak=peak)
  assert "skipped" not in rec, rec
  assert rec["median_s"] > 0 and rec["tflops"] > 0 and rec["fraction_of_peak"] == rec["tflops"]
  assert rec["compile_peak_bytes"] > 0


def test_mmjax_bench_attention_smoke_writes_to_the_default_dir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # default --out is benchmarks/results under the working directory
  assert cli.main(["bench", "attention", "--smoke", "--reps", "1", "--kernels", "xla"]) == 0
  (path,) = (tmp_path / "benchmarks" / "results").glob("attention-*.json")
  doc = json.loads(path.read_text())
  assert doc["grid"] == "smoke" and MACHINE_KEYS <= set(doc["machine"])
  assert [(r["kernel"], r["mode"]) for r in doc["results"]] == [("xla", "fwd"), ("xla", "fwd+bwd")]
  assert all("median_s" in r for r in doc["results"])
