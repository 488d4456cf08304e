"""``scripts/make_readme_tables.py`` on a temporary README and temporary (fake) results."""

import importlib.util
import json

import pytest

from mmjax import sweep
from tests.conftest import ROOT


def unwrap(text):
  """`text` with its line wrapping undone (messages are wrapped to the terminal)."""
  return " ".join(text.split())


@pytest.fixture(scope="module")
def script():
  path = ROOT / "scripts" / "make_readme_tables.py"
  spec = importlib.util.spec_from_file_location("make_readme_tables", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


MACHINE = {"platform": "cpu", "cpu_model": "Fake CPU", "cpu_cores_usable": 2, "jax": "0.10.2", "os": "Linux"}
TABLE = {"demo": {
    "dataset": "toy",
    "lead": ("model", "config"),
    "rows": [("a", "model A", "configs/a.py"), ("a-image", "model A, image only", "configs/a.py:image")],
    "columns": [("num_params", "params", "int"), ("test/accuracy", "test acc.", "percent"),
                ("test/loss", "test loss", "3f")],
}}
README = """# Project

Intro text stays.

<!-- table:demo -->
an old, hand-typed table
<!-- /table:demo -->

Closing text stays too.
"""


def write_result(results, name, config, accuracies, overrides=()):
  """A summary.json as `mmjax sweep` writes it, from fake per-seed metrics.json contents."""
  finals = {s: {"step": 600, "model": "a", "num_params": 1234, "test": {"accuracy": acc, "loss": 1.0 - acc}}
            for s, acc in enumerate(accuracies)}
  summary = {"format": 1, "config": config, "overrides": list(overrides), **sweep.summarize(finals),
             "machine": MACHINE, "git": None}
  path = results / "toy" / name / "summary.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(summary))
  return summary


@pytest.fixture
def setup(tmp_path):
  results = tmp_path / "results"
  write_result(results, "a", "/abs/path/configs/a.py", [0.95, 0.96, 0.97],
               overrides=["data.data_dir=/tmp/x", "num_steps=600"])
  write_result(results, "a-image", "configs/a.py:image", [0.80, 0.82, 0.84])
  readme = tmp_path / "README.md"
  readme.write_text(README)
  return readme, ["--readme", str(readme), "--results", str(results)]


def test_tables_are_written_between_the_markers(script, setup, capsys):
  readme, args = setup
  assert script.main(args, TABLE) == 0
  text = readme.read_text()
  assert text.startswith("# Project\n\nIntro text stays.\n\n<!-- table:demo -->\n| model | config |")
  assert text.endswith("<!-- /table:demo -->\n\nClosing text stays too.\n")
  assert "hand-typed" not in text
  lines = text.splitlines()
  assert "| model | config | params | test acc. | test loss |" in lines
  assert "| model A | `configs/a.py` `num_steps=600` | 1,234 | 96.0 ± 1.0 % | 0.040 ± 0.010 |" in lines
  assert "| model A, image only | `configs/a.py:image` | 1,234 | 82.0 ± 2.0 % | 0.180 ± 0.020 |" in lines
  assert ("Mean ± std over n = 3 seeds (0, 1, 2) per row; std is the sample standard deviation (ddof = 1). "
          "Measured on CPU (Fake CPU, 2 cores), jax 0.10.2.") in text
  assert "from `results/toy/`" in text and "rewrote demo" in capsys.readouterr().out


def test_check_passes_when_up_to_date_and_fails_when_not(script, setup, tmp_path):
  readme, args = setup
  assert script.main([*args, "--check"], TABLE) == 1
  assert readme.read_text() == README  # --check changes nothing
  assert script.main(args, TABLE) == 0
  written = readme.read_text()
  assert script.main([*args, "--check"], TABLE) == 0
  assert script.main(args, TABLE) == 0 and readme.read_text() == written  # idempotent
  write_result(tmp_path / "results", "a", "configs/a.py", [0.5, 0.6, 0.7])  # new results committed
  assert script.main([*args, "--check"], TABLE) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results"]  # no temporary files left


def test_missing_or_mislabelled_results_and_bad_markers_are_errors(script, setup, tmp_path, capsys):
  readme, args = setup
  (tmp_path / "results" / "toy" / "a-image" / "summary.json").unlink()
  assert script.main(args, TABLE) == 2
  err = capsys.readouterr().err
  err = unwrap(err)
  assert "not committed" in err and "toy/a-image/summary.json" in err and "mmjax sweep --config" in err
  write_result(tmp_path / "results", "a-image", "configs/a.py:audio", [0.5])
  assert script.main(args, TABLE) == 2
  assert "made with config 'configs/a.py:audio'" in unwrap(capsys.readouterr().err)
  readme.write_text("<!-- table:other -->\nx\n<!-- /table:other -->\n")
  assert script.main(args, TABLE) == 2 and "does not define" in unwrap(capsys.readouterr().err)
  readme.write_text("<!-- table:demo -->\nx\n")
  assert script.main(args, TABLE) == 2 and "no closing" in unwrap(capsys.readouterr().err)
  assert readme.read_text() == "<!-- table:demo -->\nx\n"


def test_real_spec_is_well_formed_and_a_readme_without_markers_is_left_alone(script, tmp_path, capsys):
  for table_id, spec in script.TABLES.items():
    assert 1 <= len(spec["lead"]) <= 2 and all(isinstance(h, str) for h in spec["lead"]), table_id
    for _, _, config, *_ in spec["rows"]:
      assert (ROOT / config.split(":")[0]).is_file(), config
    for _, _, fmt in spec["columns"]:
      sweep.format_cell({"mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6}, fmt)  # a known format
  readme = tmp_path / "README.md"
  readme.write_text("no tables here\n")
  assert script.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 0
  assert "nothing to do" in capsys.readouterr().out


def test_published_tables_name_their_sources_and_bad_files_are_errors(script, tmp_path, capsys):
  results, readme = tmp_path / "results", tmp_path / "README.md"
  readme.write_text("<!-- table:published_cmu_mosi -->\nold\n<!-- /table:published_cmu_mosi -->\n")
  args = ["--readme", str(readme), "--results", str(results)]
  assert script.main(args) == 2 and "not committed" in unwrap(capsys.readouterr().err)
  (results / "published").mkdir(parents=True)
  path = results / "published" / "cmu_mosi.json"
  columns = [["acc2", "Acc-2", ".1f"], ["mae", "MAE", ".3f"]]
  path.write_text(json.dumps({"title": "Paper numbers", "columns": columns,
                              "rows": [{"model": "X", "acc2": 77.14, "mae": 0.87, "source": "Someone, 2017"},
                                       {"model": "Y", "acc2": 70.0, "source": "Other, 2018"}]}))
  assert script.main(args) == 0
  text = readme.read_text()
  assert "| X | 77.1 | 0.870 | Someone, 2017 |" in text and "| Y | 70.0 | \u2013 | Other, 2018 |" in text
  assert "Paper numbers: as reported by the source of each row, not measured here" in unwrap(text)
  path.write_text(json.dumps({"rows": []}))  # no columns
  assert script.main(args) == 2 and "not a table of published numbers" in unwrap(capsys.readouterr().err)
  # the committed file renders
  assert "| LMF |" in script.render_published("published_cmu_mosi", ROOT / "results")


def test_collect_results_copies_small_files_and_drops_an_earlier_sweeps(tmp_path):
  """``scripts/collect_results.py``: the summary and each seed's metrics are copied, checkpoints are not,
  and a destination's files from an earlier sweep (another seed, a file the new run has not) are gone."""
  path = ROOT / "scripts" / "collect_results.py"
  spec = importlib.util.spec_from_file_location("collect_results", path)
  collect_results = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(collect_results)
  sweep_dir, dest = tmp_path / "sweep", tmp_path / "results"
  (sweep_dir / "seed_0" / "checkpoints" / "100").mkdir(parents=True)
  (sweep_dir / "seed_0" / "confusion").mkdir()
  for name in ("summary.json", "summary.md", "seed_0/metrics.json", "seed_0/confusion/test.json",
               "seed_0/checkpoints/100/state"):
    (sweep_dir / name).write_text("new")
  for name in ("seed_0/confusion/best-test.json", "seed_3/metrics.json"):  # an earlier, larger sweep's
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    (dest / name).write_text("old")
  assert collect_results.main([str(sweep_dir), str(dest)]) == 0
  files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
  assert files == ["seed_0/confusion/test.json", "seed_0/metrics.json", "summary.json", "summary.md"]
  with pytest.raises(SystemExit, match="no summary.json"):
    collect_results.collect(tmp_path / "nothing", dest)
  with pytest.raises(SystemExit, match="is the sweep itself"):  # would delete the sweep's seeds
    collect_results.collect(sweep_dir, sweep_dir / ".." / "sweep")
  assert (sweep_dir / "seed_0" / "metrics.json").is_file()
