"""``mmjax plot``: reading run logs and confusion files, the figures, and the errors users hit."""

import json

import numpy as np
import pytest
from PIL import Image

from mmjax import plot
from mmjax.plot import PlotError


def unwrap(text):
  """`text` with its line wrapping undone (messages are wrapped to the terminal)."""
  return " ".join(text.split())


def write_run(workdir, *, offset=0.0, steps=(2, 4, 6), tail="", confusion=None, extra=()):
  """A run directory as the engine writes it: train windows, a validation and a final test evaluation."""
  workdir.mkdir(parents=True, exist_ok=True)
  records = []
  for s in steps:
    records.append({"step": s, "split": "train", "loss": 2.0 / s + offset, "accuracy": 1 - 1 / s,
                    "grad_norm": 1.0 / s, "param_norm": 10.0 + s, "update_norm": 0.01,
                    "steps_per_s": None if s == steps[0] else 3.0, "examples_per_s": 24.0,
                    "learning_rate": 1e-3})
  records.append({"step": steps[-1], "split": "validation", "loss": 0.5, "accuracy": 0.8, "count": 179})
  records.append({"step": steps[-1], "split": "test", "loss": 0.6, "accuracy": 0.7, "count": 359})
  records += list(extra)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
  if confusion is not None:
    (workdir / "confusion").mkdir(exist_ok=True)
    (workdir / "confusion" / "test.json").write_text(json.dumps(confusion))
  return workdir


CONFUSION = {"split": "test", "step": 6, "labels": ["zero", "one", "two"],
             "matrix": [[5, 1, 0], [0, 4, 2], [0, 0, 0]]}


def is_png(path):
  with Image.open(path) as image:
    return image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_read_log_returns_the_records(tmp_path):
  records = plot.read_log(write_run(tmp_path / "run"))
  assert [r["split"] for r in records] == ["train"] * 3 + ["validation", "test"]


def test_read_log_skips_a_truncated_last_line_with_a_warning(tmp_path):
  said = []
  records = plot.read_log(write_run(tmp_path / "run", tail='{"step": 8, "split": "tra'), echo=said.append)
  assert len(records) == 5
  assert len(said) == 1 and "incomplete" in said[0] and "line 6" in said[0]


def test_read_log_errors_say_what_is_missing(tmp_path):
  with pytest.raises(PlotError, match="does not exist"):
    plot.read_log(tmp_path / "nowhere")
  with pytest.raises(PlotError, match="no metrics.jsonl.*--workdir of `mmjax train`"):
    plot.read_log(tmp_path)
  (tmp_path / "metrics.jsonl").write_text("\n")
  with pytest.raises(PlotError, match="is empty.*log_every"):
    plot.read_log(tmp_path)
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "spl')
  with pytest.raises(PlotError, match="only an incomplete line"):
    plot.read_log(tmp_path, echo=lambda _: None)
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "split"\n{"step": 4, "split": "train", "loss": 1}\n')
  with pytest.raises(PlotError, match="line 1, is not JSON.*damaged"):
    plot.read_log(tmp_path)
  (tmp_path / "metrics.jsonl").write_text('[1, 2]\n')
  with pytest.raises(PlotError, match="expected an object with 'step' and 'split'"):
    plot.read_log(tmp_path)


def test_metric_curves_order_dedupe_and_skipped_keys():
  records = [
      {"step": 2, "split": "train", "token_accuracy": 0.1, "accuracy": 0.2, "loss": 3.0, "steps_per_s": None,
       "examples_per_s": 5.0, "flag": True, "note": "x"},
      {"step": 4, "split": "train", "token_accuracy": 0.3, "accuracy": 0.4, "loss": 2.0},
      {"step": 4, "split": "validation", "loss": 2.5, "count": 179},
      {"step": 4, "split": "train", "loss": 1.5},  # a resumed run logs step 4 again: the later one wins
      {"step": 2, "split": "train", "loss": 2.9},  # out of order
  ]
  curves = plot.metric_curves(records)
  assert list(curves) == ["loss", "accuracy", "token_accuracy"]
  steps, values = curves["loss"]["train"]
  assert steps.tolist() == [2, 4] and values.tolist() == [2.9, 1.5]
  assert curves["loss"]["validation"][1].tolist() == [2.5]
  assert list(curves["accuracy"]) == ["train"]


def test_run_names_use_as_much_of_the_path_as_makes_them_distinct(tmp_path):
  assert plot.run_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
  assert plot.run_names([tmp_path / "x" / "seed_0", tmp_path / "y" / "seed_0"]) == ["x/seed_0", "y/seed_0"]
  assert plot.run_names([tmp_path / "x" / "seed_0", tmp_path / "y" / "seed_0", tmp_path / "c"]) == [
      "x/seed_0", "y/seed_0", f"{tmp_path.name}/c"]
  with pytest.raises(PlotError, match="more than once"):
    plot.run_names([tmp_path / "a", tmp_path / "b" / ".." / "a"])


def test_read_confusion_and_normalize_rows(tmp_path):
  path = tmp_path / "test.json"
  path.write_text(json.dumps(CONFUSION))
  confusion = plot.read_confusion(path)
  assert confusion["labels"] == ["zero", "one", "two"] and confusion["step"] == 6
  rates = plot.normalize_rows(confusion["matrix"])
  np.testing.assert_allclose(rates, [[5 / 6, 1 / 6, 0], [0, 4 / 6, 2 / 6], [0, 0, 0]])  # empty row stays 0
  for bad, message in [({"matrix": [[1, 2]], "labels": [0]}, "square"),
                       ({"matrix": [[1, 0], [0, 1]], "labels": [0]}, "one row per label"),
                       ({"matrix": [[1, -1], [0, 1]], "labels": [0, 1]}, "non-negative"),
                       ({"matrix": [["a", 1], [0, 1]], "labels": [0, 1]}, "not a table of numbers"),
                       ({"labels": [0]}, "'matrix'")]:
    path.write_text(json.dumps(bad))
    with pytest.raises(PlotError, match=message):
      plot.read_confusion(path)
  path.write_text('{"matrix": [[1')
  with pytest.raises(PlotError, match="not JSON"):
    plot.read_confusion(path)


def test_plot_confusion_writes_a_png(tmp_path):
  confusion = {**CONFUSION, "matrix": np.asarray(CONFUSION["matrix"], float)}
  path = plot.plot_confusion(confusion, tmp_path / "c.png")
  assert path == tmp_path / "c.png" and is_png(path)
  big = {"split": "test", "step": None, "labels": list(range(50)), "matrix": np.eye(50) * 3}
  assert is_png(plot.plot_confusion(big, tmp_path / "big.png", title="fifty classes"))


def test_plot_runs_one_run_writes_into_its_plots_folder(tmp_path):
  run = write_run(tmp_path / "run", confusion=CONFUSION,
                  extra=[{"step": 6, "split": "fewshot", "acc_1shot": 0.6, "count": 10}])
  said = []
  paths = plot.plot_runs([run], echo=said.append)
  assert [p.name for p in paths] == ["loss.png", "accuracy.png", "acc_1shot.png", "optimization.png",
                                     "confusion-run-test.png"]
  assert all(p.parent == run / "plots" and is_png(p) for p in paths)
  assert "wrote 5 figure(s)" in said[-1]


def test_plot_runs_several_runs_overlaid(tmp_path):
  runs = [write_run(tmp_path / "a" / "seed_0", confusion=CONFUSION),
          write_run(tmp_path / "b" / "seed_0", offset=0.1, steps=(2, 4, 6, 8))]
  with pytest.raises(PlotError, match="needs an output folder.*--out"):
    plot.plot_runs(runs)
  paths = plot.plot_runs(runs, tmp_path / "out", echo=lambda _: None)
  assert [p.name for p in paths] == ["loss.png", "accuracy.png", "optimization.png",
                                     "confusion-a_seed_0-test.png"]
  curves = [(name, plot.metric_curves(plot.read_log(r)))
            for name, r in zip(["a/seed_0", "b/seed_0"], runs, strict=True)]
  fig = plot._metric_figure(curves, "loss")
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert legend == ["a/seed_0", "b/seed_0", "train", "validation", "test"]
  assert len(fig.axes[0].get_lines()) == 6  # 2 runs x 3 splits


def test_plot_runs_without_numeric_metrics_is_a_clear_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "split": "train", "steps_per_s": 3.0, "note": "x"}\n')
  with pytest.raises(PlotError, match="no numeric metrics"):
    plot.plot_runs([tmp_path])
  with pytest.raises(PlotError, match="no run directory"):
    plot.plot_runs([])


def test_plot_command(tmp_path, capsys):
  from mmjax.cli import main

  run = write_run(tmp_path / "run")
  assert main(["plot", str(run)]) == 0
  assert (run / "plots" / "loss.png").exists() and "wrote 3 figure(s)" in capsys.readouterr().out
  assert main(["plot", str(run), str(write_run(tmp_path / "other")), "--out", str(tmp_path / "o")]) == 0
  assert (tmp_path / "o" / "accuracy.png").exists()
  assert main(["plot", str(run), str(tmp_path / "other")]) == 2
  assert "needs an output folder" in unwrap(capsys.readouterr().err)
  assert main(["plot", str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err
  assert "does not exist" in unwrap(err) and "Traceback" not in err
