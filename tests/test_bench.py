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
                                  ["bench", "train_step", "--help"], ["bench", "prng", "--help"],
                                  ["bench", "profile", "--help"]])
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


def test_full_grid_puts_bfloat16_and_the_models_shapes_first():
  shapes = attention.grid(on_gpu=True, quick=False)
  assert len(shapes) == 38 and len({json.dumps(s, sort_keys=True) for s in shapes}) == 38
  assert [s["group"] for s in shapes[:4]] == ["cross:text<-audio", "cross:audio<-text", "cross:video<-text",
                                              "cross:text<-video"]
  dtypes = [s["dtype"] for s in shapes]
  assert dtypes == sorted(dtypes, key=lambda d: d != "bfloat16")  # every bfloat16 shape before float32
  self64 = [s["lq"] for s in shapes if s["group"] == "self" and s["d"] == 64 and s["dtype"] == "bfloat16"]
  assert self64 == sorted(self64)


def _fake_measure(calls, fail_at=None):
  def measure(kernel, s, mode, reps, on_gpu, peak):
    calls.append((kernel, mode))
    if len(calls) == fail_at:
      raise RuntimeError("killed")
    return {"kernel": kernel, "mode": mode, "shape": s, "flops": 1.0, "median_s": 1.0, "tflops": 1e-12}
  return measure


def test_attention_json_is_written_after_every_record(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(attention, "measure", _fake_measure(calls, fail_at=3))
  with pytest.raises(RuntimeError, match="killed"):
    attention.run(["--smoke", "--kernels", "xla,jax", "--out", str(tmp_path)])
  (path,) = tmp_path.glob("attention-*.json")
  doc = json.loads(path.read_text())
  assert [(r["kernel"], r["mode"]) for r in doc["results"]] == [("xla", "fwd"), ("jax", "fwd")]
  assert doc["complete"] is False


def test_attention_stops_at_its_time_budget(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(attention, "measure", _fake_measure(calls))
  path = attention.run(["--smoke", "--kernels", "xla,jax", "--out", str(tmp_path), "--budget-s", "1e-9"])
  doc = json.loads(path.read_text())
  assert calls == [] and doc["results"] == [] and doc["not_reached"] == 4 and doc["complete"] is False
  path = attention.run(["--smoke", "--kernels", "xla,jax", "--out", str(tmp_path), "--budget-s", "600"])
  doc = json.loads(path.read_text())
  assert len(doc["results"]) == 4 and doc["complete"] is True and "not_reached" not in doc


def test_compute_dtype_from_the_precision_override():
  from mmjax.bench import train_step
  from mmjax.config import ConfigError, get_config

  for text, expected in (("bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("FP32", "float32")):
    config = get_config("configs/mfm_mosi.py", [f"precision={text}"])
    assert train_step.compute_dtype(config) == expected and config.precision == expected
  assert train_step.compute_dtype(get_config("configs/mfm_mosi.py")) == "float32"  # the default
  with pytest.raises(ConfigError, match="precision 'bf17' is not known.*Valid names: float32, bfloat16"):
    get_config("configs/mfm_mosi.py", ["precision=bf17"])
  with pytest.raises(ConfigError, match="model.kwargs.dtype .* is set by config.precision"):
    get_config("configs/mfm_mosi.py", ["model.kwargs.dtype=bfloat16"])


def test_utilization_over_the_dense_peak_of_the_compute_dtype():
  from types import SimpleNamespace

  from mmjax.bench.train_step import utilization

  h200 = SimpleNamespace(device_kind="NVIDIA H200", platform="gpu")
  u = utilization(98.9e12 * 0.5, 0.5, "bfloat16", h200)
  assert u["tflops_per_device"] == pytest.approx(98.9) and u["mfu"] == pytest.approx(0.1)
  assert utilization(6.7e12, 1.0, "float32", h200)["mfu"] == pytest.approx(0.1)
  cpu = SimpleNamespace(device_kind="cpu", platform="cpu")
  u = utilization(1e9, 1.0, "bfloat16", cpu)
  assert u["tflops_per_device"] == pytest.approx(1e-3) and u["mfu"] is None
  assert utilization(None, 1.0, "bfloat16", h200)["mfu"] is None  # no cost analysis
  assert utilization(1e12, 1.0, "bfloat16", SimpleNamespace(device_kind="New", platform="gpu"))["mfu"] is None


@pytest.mark.slow
def test_bench_prng_smoke_writes_every_implementation(tmp_path, data_dir):
  from tests.conftest import CONFIGS

  config = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
  assert cli.main(["bench", "prng", "--config", config, "--synthetic", "--rounds", "1", "--impls",
                   "threefry,rbg", "--out", str(tmp_path), f"--config.data.data_dir={data_dir}"]) == 0
  (path,) = tmp_path.glob("prng-*.json")
  (result,) = json.loads(path.read_text())["results"].values()
  assert set(result["impls"]) == {"threefry", "rbg"}
  assert result["impls"]["threefry"]["speedup_vs_threefry_cpu"] == 1.0


def test_profile_labels_hlo_instructions_by_pass_primitive_and_scope():
  from mmjax.bench import profile

  hlo = "\n".join([
      'ENTRY %main {',
      '  %fusion.3 = f32[8,4]{1,0} fusion(%p0), kind=kLoop, calls=%fc, metadata={op_name="jit(train_step)/'
      'jvp(MulT)/crossmodal_l_from_a/layer_2/attn/exp" source_file="x.py"}, backend_config={}',
      '  ROOT %dot.7 = f32[8,4]{1,0} dot(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(MulT))/'
      'proj1/dot_general"}',
      '  %copy.1 = f32[8]{0} copy(%c)',
      '}'])
  meta = profile.instruction_metadata(hlo)
  assert set(meta) == {"fusion.3", "dot.7"}  # the copy has no metadata
  assert profile.label(meta["fusion.3"]) == {"pass": "forward", "primitive": "exp",
                                             "scope": "crossmodal_l_from_a/layer/attn"}
  assert profile.label(meta["dot.7"]) == {"pass": "backward", "primitive": "dot_general", "scope": "proj1"}
  assert profile.label("jit(train_step)/optax/adam/mul")["pass"] == "optimizer"


@pytest.mark.slow  # the profiler's start and stop take most of a minute on 2 busy cores
def test_bench_profile_times_the_steps_instructions(tmp_path, data_dir):
  from tests.conftest import CONFIGS

  config = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
  assert cli.main(["bench", "profile", "--config", config, "--synthetic", "--out", str(tmp_path),
                   f"--config.data.data_dir={data_dir}"]) == 0
  (path,) = tmp_path.glob("profile-*.json")
  (result,) = json.loads(path.read_text())["results"].values()
  assert result["instructions_timed"] > 10 and result["op_seconds_per_step"] > 0
  shares = {row["name"]: row["share"] for row in result["by_pass"]}
  assert {"forward", "backward"} <= set(shares) and sum(shares.values()) == pytest.approx(1.0)
  assert any(op["primitive"] == "dot_general" for op in result["ops"])


def test_profile_charges_nested_instructions_their_self_time(tmp_path):
  import gzip

  from mmjax.bench import profile

  events = [{"ph": "X", "name": "call.1", "ts": 0, "dur": 100, "pid": 1, "tid": 1},
            {"ph": "X", "name": "fusion.2", "ts": 10, "dur": 60, "pid": 1, "tid": 1},  # inside call.1
            {"ph": "X", "name": "fusion.2", "ts": 5, "dur": 30, "pid": 1, "tid": 2},  # another thread
            {"ph": "X", "name": "PjitFunction", "ts": 0, "dur": 500, "pid": 1, "tid": 1},  # not an op
            {"ph": "X", "name": "fusion.3", "ts": 200, "dur": 40, "pid": 1, "tid": 1}]
  (tmp_path / "x").mkdir()
  with gzip.open(tmp_path / "x" / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  seconds, counts = profile.op_times(str(tmp_path), {"call.1", "fusion.2", "fusion.3"})
  assert seconds == pytest.approx({"call.1": 40e-6, "fusion.2": 90e-6, "fusion.3": 40e-6})
  assert counts == {"call.1": 1, "fusion.2": 2, "fusion.3": 1}
