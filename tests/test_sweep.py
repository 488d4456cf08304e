"""``mmjax sweep``: seeds trained by the real engine, summary statistics, Markdown, and the errors."""

import json
import math

import numpy as np
import pytest

from mmjax import sweep
from mmjax.sweep import SweepError
from tests.conftest import CONFIGS


def unwrap(text):
  """`text` with its line wrapping undone (messages are wrapped to the terminal)."""
  return " ".join(text.split())

SPEC = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
# Two steps, no evaluation or checkpoint before the end: the smallest real runs.
FAST = ["num_steps=2", "log_every=1", "eval_every=0", "checkpoint_every=0", "async_checkpoints=false"]
SEEDS = [0, 1, 2]


def overrides(data_dir):
  return [f"data.data_dir={data_dir}", *FAST]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_dir):
  """A 3-seed sweep of the runlocal late-fusion config."""
  workdir = tmp_path_factory.mktemp("sweep")
  said = []
  summary = sweep.run_sweep(SPEC, overrides(data_dir), SEEDS, workdir, echo=said.append)
  return workdir, summary, said


def per_seed(workdir):
  return {s: json.loads((workdir / f"seed_{s}" / "metrics.json").read_text()) for s in SEEDS}


def test_summary_statistics_equal_numpys_on_the_seeds_metrics(swept):
  workdir, summary, _ = swept
  finals = per_seed(workdir)
  flat = {s: sweep.flatten_metrics(finals[s])[0] for s in SEEDS}
  assert json.loads((workdir / "summary.json").read_text()) == summary
  assert summary["seeds"] == SEEDS and set(summary["metrics"]) == set(flat[0])
  for path in ("test/accuracy", "test/loss", "validation/accuracy", "train/loss", "train/grad_norm"):
    values = np.array([flat[s][path] for s in SEEDS])
    stats = summary["metrics"][path]
    assert stats["values"] == values.tolist() and stats["n"] == 3
    assert stats["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert stats["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert (stats["min"], stats["max"]) == (values.min(), values.max())
  assert summary["metrics"]["num_params"]["std"] == 0.0


def test_the_seeds_really_differ(swept):
  workdir, summary, said = swept
  finals = per_seed(workdir)
  assert len({finals[s]["test"]["loss"] for s in SEEDS}) == 3
  assert len({finals[s]["train"]["loss"] for s in SEEDS}) == 3
  assert [json.loads((workdir / f"seed_{s}" / "config.json").read_text())["seed"] for s in SEEDS] == SEEDS
  assert any("seed 2 (3/3)" in line for line in said)


def test_summary_records_what_ran_and_where(swept, data_dir):
  workdir, summary, _ = swept
  assert summary["config"] == SPEC and summary["overrides"] == overrides(data_dir)
  assert summary["workdirs"] == ["seed_0", "seed_1", "seed_2"] and summary["info"]["model"] == "late_fusion"
  machine = summary["machine"]
  assert machine["device_kind"] and machine["jax"] and machine["os"] and machine["platform"] == "cpu"
  assert summary["git"] is None or len(summary["git"]["commit"]) == 40
  assert "ddof" in summary["note"]
  assert sorted(p.name for p in workdir.iterdir()) == ["seed_0", "seed_1", "seed_2", "summary.json",
                                                       "summary.md"]  # no temporary files left


def test_summary_markdown_is_a_table_of_mean_std_min_max(swept):
  workdir, summary, _ = swept
  text = (workdir / "summary.md").read_text()
  assert text == sweep.summary_markdown(summary)
  st = summary["metrics"]["test/accuracy"]
  f = sweep.format_number
  assert (f"| test/accuracy | {f(st['mean'])} ± {f(st['std'])} ({f(st['min'])}\u2013{f(st['max'])}) | 3 |"
          in text)
  assert "ddof = 1" in text and "seed 2" in text and SPEC in text


def test_a_sweep_summary_makes_a_readme_table(swept):
  _, summary, _ = swept
  table = sweep.markdown_table([(["late fusion"], summary)], [("test/accuracy", "test acc.", "percent")])
  st = summary["metrics"]["test/accuracy"]
  assert f"| late fusion | {100 * st['mean']:.1f} ± {100 * st['std']:.1f} % |" in table


def test_plot_draws_the_sweeps_runs(swept, tmp_path):
  from mmjax.plot import plot_runs

  workdir, _, _ = swept
  paths = plot_runs([workdir / f"seed_{s}" for s in SEEDS], tmp_path, echo=lambda _: None)
  assert {"loss.png", "accuracy.png", "optimization.png"} <= {p.name for p in paths}


def test_sweep_command_passes_overrides_and_reevaluates_finished_seeds(swept, data_dir, capsys):
  from mmjax.cli import main

  workdir, before, _ = swept
  args = ["sweep", "--config", SPEC, "--seeds", "0-2", "--workdir", str(workdir),
          *(f"--config.{o}" for o in overrides(data_dir))]
  assert main(args) == 0
  out = capsys.readouterr().out
  assert out.count("resuming from checkpoint at step 2") == 3  # finished: evaluated again, not retrained
  after = json.loads((workdir / "summary.json").read_text())
  assert after["overrides"] == before["overrides"] and after["seeds"] == SEEDS
  for path in ("test/accuracy", "test/loss", "train/loss"):
    np.testing.assert_allclose(after["metrics"][path]["values"], before["metrics"][path]["values"], rtol=1e-5)


def test_a_workdir_of_another_config_or_a_seed_override_is_refused(swept, data_dir):
  workdir, _, _ = swept
  with pytest.raises(SweepError, match=r"another config \(differs in optimizer.lr\).*new --workdir"):
    sweep.run_sweep(SPEC, [*overrides(data_dir), "optimizer.lr=0.1"], [0], workdir)
  with pytest.raises(SweepError, match="--seeds, not --config.seed"):
    sweep.run_sweep(SPEC, ["seed=3"], [0], workdir)
  with pytest.raises(SweepError, match="more than once"):
    sweep.run_sweep(SPEC, [], [1, 1], workdir)


def test_sweep_command_errors_exit_2(tmp_path, capsys):
  from mmjax.cli import main

  assert main(["sweep", "--config", SPEC, "--seeds", "a", "--workdir", str(tmp_path)]) == 2
  assert "seeds must be integers" in unwrap(capsys.readouterr().err)
  assert main(["sweep", "--config", SPEC, "--seeds", "0", "--workdir", str(tmp_path), "--config.nope=1"]) == 2
  assert "unknown config key 'nope'" in unwrap(capsys.readouterr().err)


def test_parse_seeds():
  assert sweep.parse_seeds("0,1,2") == [0, 1, 2]
  assert sweep.parse_seeds(" 3, 0-2 ,") == [3, 0, 1, 2]
  for bad, message in [("", "at least one seed"), ("x", "integers"), ("0,0-1", "more than once")]:
    with pytest.raises(SweepError, match=message):
      sweep.parse_seeds(bad)


FINAL = {"step": 10, "model": "m", "num_params": 100,
         "train": {"loss": 1.0, "grad_norm": 2.0},
         "validation": {"loss": 0.5, "accuracy": 0.8, "count": 179},
         "test": {"accuracy": 0.75, "coherence/audio->image": 0.3, "flag": True, "none": None},
         "best": {"step": 6, "metric": "validation/accuracy", "value": 0.82,
                  "validation": {"accuracy": 0.82}, "test": {"accuracy": 0.7}}}


def test_flatten_metrics_groups_and_order():
  numbers, others = sweep.flatten_metrics(FINAL)
  assert list(numbers) == ["test/accuracy", "test/coherence/audio->image", "validation/loss",
                           "validation/accuracy", "validation/count", "best/step", "best/value",
                           "best/validation/accuracy", "best/test/accuracy", "train/loss", "train/grad_norm",
                           "step", "num_params"]
  assert others == {"model": "m", "test/flag": True, "best/metric": "validation/accuracy"}


def test_metric_stats():
  st = sweep.metric_stats([1.0, None, 2.0, 6.0])
  assert st == {"mean": 3.0, "std": pytest.approx(np.std([1, 2, 6], ddof=1)), "min": 1.0, "max": 6.0, "n": 3}
  assert sweep.metric_stats([4.0]) == {"mean": 4.0, "std": None, "min": 4.0, "max": 4.0, "n": 1}
  assert sweep.metric_stats([None])["n"] == 0
  assert sweep.metric_stats([1.0, math.nan])["mean"] is None  # non-finite: null in JSON


def test_summarize_missing_metrics_and_disagreeing_info():
  other = {**FINAL, "model": "n", "test": {"accuracy": 0.85}}
  summary = sweep.summarize({3: FINAL, 7: other})
  assert summary["seeds"] == [3, 7]
  st = summary["metrics"]["test/accuracy"]
  assert st["values"] == [0.75, 0.85] and st["mean"] == pytest.approx(0.8)
  assert st["std"] == pytest.approx(np.std([0.75, 0.85], ddof=1))
  assert summary["metrics"]["test/coherence/audio->image"]["values"] == [0.3, None]
  assert summary["metrics"]["test/coherence/audio->image"]["n"] == 1
  assert summary["info"]["model"] == ["m", "n"] and summary["info"]["best/metric"] == "validation/accuracy"


def test_write_summary_and_markdown(tmp_path):
  summary = {"config": "c.py", "overrides": [], **sweep.summarize({0: FINAL}), "git": None, "machine": None}
  json_path, md_path = sweep.write_summary(summary, tmp_path)
  assert json.loads(json_path.read_text()) == summary
  text = md_path.read_text()
  assert "| test/accuracy | 0.75 ± \u2014 | 1 |" in text and "overrides: none" in text
  assert "commit: unknown" in text and "machine: unknown" in text
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]


def test_format_number_and_cells():
  assert [sweep.format_number(v) for v in (None, 122250.0, 0.96875, 2.0, 1e-5)] == [
      "\u2014", "122,250", "0.9688", "2", "1e-05"]
  st = {"mean": 0.9686, "std": 0.0041, "min": 0.96, "max": 0.97, "n": 3}
  assert sweep.format_cell(st, "percent") == "96.9 ± 0.4 %"
  assert sweep.format_cell(st, "3f") == "0.969 ± 0.004"
  assert sweep.format_cell({**st, "std": None}, "2f") == "0.97"
  assert sweep.format_cell({"mean": 1000.0, "std": 0.0, "min": 1000.0, "max": 1000.0}, "int") == "1,000"
  assert sweep.format_cell(None, "percent") == "\u2014"
  with pytest.raises(ValueError, match="unknown cell format"):
    sweep.format_cell(st, "pct")


def test_markdown_table_and_footnote():
  machine = {"platform": "gpu", "device_count": 1, "device_kind": "NVIDIA H200", "jax": "0.11", "os": "Linux"}
  a = {"seeds": [0, 1, 2], "machine": machine, **sweep.summarize({0: FINAL, 1: FINAL, 2: FINAL})}
  table = sweep.markdown_table([(["A", "`a.py`"], a), (["B", "`b.py`"], None)],
                               [("num_params", "params", "int"), ("test/accuracy", "test acc.", "percent")],
                               lead=("model", "config"))
  assert table.splitlines() == ["| model | config | params | test acc. |", "|---|---|---:|---:|",
                                "| A | `a.py` | 100 | 75.0 ± 0.0 % |", "| B | `b.py` | \u2014 | \u2014 |"]
  with pytest.raises(ValueError, match="leading cell"):
    sweep.markdown_table([(["A"], a)], [], lead=("model", "config"))
  note = sweep.table_footnote([a, a])
  assert "n = 3 seeds (0, 1, 2)" in note and "ddof = 1" in note
  assert "Measured on 1 x NVIDIA H200, jax 0.11." in note
  b = {**a, "seeds": [0, 1, 2, 3, 4], "machine": None}
  assert "n = 3\u20135 seeds per row" in sweep.table_footnote([a, b])
  one = {**a, "seeds": [0]}
  assert sweep.table_footnote([one]).startswith("One seed (0) per row, so no std.")


def test_describe_machine_git_commit_and_machine_info(tmp_path):
  cpu = {"platform": "cpu", "cpu_model": "Xeon", "cpu_cores_usable": 2, "jax": "0.10.2", "os": "Linux"}
  assert sweep.describe_machine(cpu) == "CPU (Xeon, 2 cores), jax 0.10.2, Linux"
  assert sweep.describe_machine(cpu, os_name=False) == "CPU (Xeon, 2 cores), jax 0.10.2"
  assert sweep.git_commit(tmp_path) is None  # not a checkout
  info = sweep.machine_info()
  assert {"os", "device_kind", "platform", "device_count", "jax", "jaxlib", "python"} <= set(info)
