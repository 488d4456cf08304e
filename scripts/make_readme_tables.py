"""Rewrites the results tables of README.md from the sweep summaries committed under ``results/``.

Each table of :data:`TABLES` lives in the README between ``<!-- table:ID -->`` and ``<!-- /table:ID -->``
(put the two markers where the table belongs; tables without markers are left alone). A row reads
``results/<dataset>/<name>/summary.json``, the ``summary.json`` of ``mmjax sweep``; a cell is the mean ±
the sample standard deviation over its seeds, and a footnote gives the number of seeds and the machine.

    python scripts/make_readme_tables.py           # rewrite README.md
    python scripts/make_readme_tables.py --check   # exit 1 if README.md is out of date (for CI)

To add or refresh a row: ``mmjax sweep --config CONFIG --seeds 0,1,2 --workdir runs/sweeps/NAME``, copy
``runs/sweeps/NAME/summary.json`` to ``results/<dataset>/NAME/summary.json``, commit it, run this script.

Tables of :data:`PUBLISHED` are numbers from papers, not measured here: each reads
``results/published/<ID>.json`` (``{"title", "columns": [[key, header, format]], "rows": [{"model",
"source", key: value}]}``) and names every row's source.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mmjax, installed or not

from mmjax.sweep import markdown_table, table_footnote  # noqa: E402

# table id -> dataset (the folder under results/), leading headers ("model" and optionally "config"),
# rows (result name, label, config as passed to `mmjax sweep --config`, and optionally a prefix of the
# metric paths the row reads) and columns (metric path in summary.json after that prefix, header, cell
# format: "percent", "int" or "<k>f" for k decimals).
TABLES = {
    "digits_av": {
        "dataset": "digits_av",
        "lead": ("model", "config"),
        "rows": [
            ("late_fusion", "late fusion", "configs/late_fusion_digits.py"),
            ("early_fusion", "early fusion", "configs/early_fusion_digits.py"),
            ("late_fusion-image", "unimodal: image", "configs/late_fusion_digits.py:image"),
            ("late_fusion-audio", "unimodal: audio", "configs/late_fusion_digits.py:audio"),
            ("late_fusion-text", "unimodal: text", "configs/late_fusion_digits.py:text"),
        ],
        "columns": [
            ("num_params", "params", "int"),
            ("validation/accuracy", "validation acc.", "percent"),
            ("test/accuracy", "test acc.", "percent"),
            ("best/test/accuracy", "test acc., best val. loss", "percent"),
        ],
    },
    "robustness_digits_av": {
        "dataset": "digits_av",
        "lead": ("model",),
        "rows": [
            ("late_fusion", "late fusion", "configs/late_fusion_digits.py"),
            ("early_fusion", "early fusion", "configs/early_fusion_digits.py"),
            ("mult", "MulT", "configs/mult_digits.py"),
            ("tfn", "TFN", "configs/tfn_digits.py"),
            ("lmf", "LMF", "configs/lmf_digits.py"),
            ("mbt", "MBT", "configs/mbt_digits.py"),
            ("mag", "MAG (BERT)", "configs/mag_digits.py"),
        ],
        "columns": [
            ("robustness/clean/accuracy", "clean", "percent"),
            ("robustness/drop/image/accuracy", "image dropped", "percent"),
            ("robustness/drop/audio/accuracy", "speech dropped", "percent"),
            ("robustness/drop/text/accuracy", "text dropped", "percent"),
            ("robustness/noise/image/1/accuracy", "image noise 1 s.d.", "percent"),
            ("robustness/noise/audio/1/accuracy", "speech noise 1 s.d.", "percent"),
            ("robustness/noise/text/0.5/accuracy", "text 50 % swapped", "percent"),
        ],
    },
    "mult_digits_av": {
        "dataset": "digits_av",
        "lead": ("model", "config"),
        "rows": [
            ("mult", "MulT", "configs/mult_digits.py"),
            ("late_fusion", "late fusion (for comparison)", "configs/late_fusion_digits.py"),
        ],
        "columns": [
            ("num_params", "params", "int"),
            ("validation/accuracy", "validation acc.", "percent"),
            ("test/accuracy", "test acc.", "percent"),
        ],
    },
    "generative_digits_av": {
        "dataset": "digits_av",
        "lead": ("model", "config"),
        "rows": [
            ("mfm", "MFM", "configs/mfm_digits.py"),
            ("mvae", "MVAE", "configs/mvae_digits.py"),
            ("mmvae", "MMVAE", "configs/mmvae_digits.py"),
        ],
        "columns": [
            ("num_params", "params", "int"),
            ("test/accuracy", "accuracy", "percent"),
            ("test/recon_error/image", "recon. image", "3f"),
            ("test/recon_error/audio", "recon. audio", "3f"),
            ("test/recon_error/text", "recon. text", "3f"),
            ("test_coherence/audio->image", "speech->image", "percent"),
            ("test_coherence/text->image", "text->image", "percent"),
            ("test_coherence/image->audio", "image->speech", "percent"),
        ],
    },
}

_SHOTS = [(str(k), f"k = {k}" if k == 0 else str(k), "percent") for k in range(6)]
TABLES["frozen_text_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("the LM alone, text only",),
    "rows": [
        ("frozen_lm", "fast binding (scored)", "configs/frozen_digits.py:lm", "fewshot/fast_binding/"),
        ("frozen_lm", "fast binding (open-ended)", "configs/frozen_digits.py:lm",
         "fewshot/fast_binding_open_ended/"),
        ("frozen_lm", "classification (scored)", "configs/frozen_digits.py:lm", "fewshot/classification/"),
    ],
    "columns": _SHOTS,
}
_IMAGE_ROWS = [
    ("classification (scored)", "fewshot/classification/"),
    ("classification (open-ended)", "fewshot/classification_open_ended/"),
    ("fast binding (scored)", "fewshot/fast_binding/"),
    ("fast binding (open-ended)", "fewshot/fast_binding_open_ended/"),
    ("snapped (`--snap_prefix`): classification (scored)", "fewshot_snapped/classification/"),
    ("snapped: fast binding (scored)", "fewshot_snapped/fast_binding/"),
    ("snapped: fast binding (open-ended)", "fewshot_snapped/fast_binding_open_ended/"),
    ("support as text (`--text_support`): fast binding (scored)", "fewshot_text_support/fast_binding/"),
]
TABLES["frozen_images_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("Frozen, images",),
    "rows": [(name, f"{head}: {label}", config, prefix)
             for name, head, config in (("frozen", "linear head (the paper's)", "configs/frozen_digits.py"),
                                        ("frozen-vocab", "vocab mixture", "configs/frozen_digits.py:vocab"))
             for label, prefix in _IMAGE_ROWS],
    "columns": _SHOTS,
}

TABLES["frozen_perplexity_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("frozen_lm", "the LM alone (validation documents)", "configs/frozen_digits.py:lm", "validation/"),
        ("frozen", "Frozen, linear head (test captions)", "configs/frozen_digits.py", "test/"),
        ("frozen-vocab", "Frozen, vocab mixture (test captions)", "configs/frozen_digits.py:vocab", "test/"),
    ],
    "columns": [("perplexity", "perplexity", "2f"), ("token_accuracy", "token accuracy", "percent")],
}

TABLES["fusion_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("tfn", "TFN", "configs/tfn_digits.py"),
        ("lmf", "LMF", "configs/lmf_digits.py"),
        ("mbt", "MBT", "configs/mbt_digits.py"),
        ("mag", "MAG (BERT)", "configs/mag_digits.py"),
        ("mctn", "MCTN (reads speech only)", "configs/mctn_digits.py"),
        ("late_fusion", "late fusion (for comparison)", "configs/late_fusion_digits.py"),
        ("late_fusion-audio", "speech alone (for comparison)", "configs/late_fusion_digits.py:audio"),
    ],
    "columns": [
        ("num_params", "params", "int"),
        ("validation/accuracy", "validation acc.", "percent"),
        ("test/accuracy", "test acc.", "percent"),
        ("best/test/accuracy", "test acc., best val. loss", "percent"),
    ],
}

TABLES["clip_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("clip", "CLIP (InfoNCE)", "configs/clip_digits.py"),
        ("siglip", "SigLIP (sigmoid)", "configs/clip_digits.py:sigmoid"),
    ],
    "columns": [
        ("zero_shot/zero_shot/held_out", "zero-shot 7-9 (unseen)", "percent"),
        ("zero_shot/zero_shot/seen", "zero-shot 0-6", "percent"),
        ("zero_shot/zero_shot/all", "zero-shot all", "percent"),
        ("zero_shot/probe/held_out", "linear probe 7-9", "percent"),
        ("zero_shot/probe/all", "linear probe all", "percent"),
        ("zero_shot/retrieval/i2t/R@1", "image->text R@1", "percent"),
        ("zero_shot/retrieval/i2t/R@5", "R@5", "percent"),
        ("zero_shot/retrieval/i2t/R@10", "R@10", "percent"),
        ("zero_shot/retrieval/t2i/R@1", "text->image R@1", "percent"),
        ("zero_shot/retrieval/t2i/R@5", "R@5", "percent"),
        ("zero_shot/retrieval/t2i/R@10", "R@10", "percent"),
    ],
}

TABLES["precision_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("late_fusion", "late fusion, float32", "configs/late_fusion_digits.py"),
        ("late_fusion-bf16", "late fusion, bfloat16 compute", "configs/late_fusion_digits.py"),
    ],
    "columns": [
        ("validation/accuracy", "validation acc.", "percent"),
        ("test/accuracy", "test acc.", "percent"),
        ("test/loss", "test loss", "3f"),
    ],
}

TABLES["vl_pretrain_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("visualbert_pretrain", "VisualBERT (one stream)", "configs/visualbert_digits.py:pretrain"),
        ("vilbert_pretrain", "ViLBERT (co-attention)", "configs/vilbert_digits.py:pretrain"),
        ("lxmert_pretrain", "LXMERT (cross-modality encoder)", "configs/vilbert_digits.py:lxmert,pretrain"),
    ],
    "columns": [
        ("num_params", "params", "int"),
        ("test/mlm_accuracy", "masked-token acc.", "percent"),
        ("test/itm_accuracy", "image-text matching acc.", "percent"),
    ],
}

TABLES["vl_qa_digits_av"] = {
    "dataset": "digits_av",
    "lead": ("model", "config"),
    "rows": [
        ("visualbert_qa", "VisualBERT, pretrained", "configs/visualbert_digits.py"),
        ("visualbert_qa_scratch", "VisualBERT, from scratch", "configs/visualbert_digits.py:scratch"),
        ("vilbert_qa", "ViLBERT, pretrained", "configs/vilbert_digits.py"),
        ("vilbert_qa_scratch", "ViLBERT, from scratch", "configs/vilbert_digits.py"),
        ("lxmert_qa", "LXMERT, pretrained", "configs/vilbert_digits.py:lxmert"),
        ("lxmert_qa_scratch", "LXMERT, from scratch", "configs/vilbert_digits.py:lxmert"),
    ],
    "columns": [
        ("num_params", "params", "int"),
        ("validation/accuracy", "validation acc.", "percent"),
        ("test/accuracy", "test acc.", "percent"),
    ],
}

# table id -> results/published/<id>.json: published reference numbers, each row with its source.
PUBLISHED = ("published_cmu_mosi",)


def render_published(table_id: str, results: Path) -> str:
  """The Markdown of a table of published numbers: every row names its source; nothing here is measured."""
  path = results / "published" / f"{table_id.removeprefix('published_')}.json"
  if not path.is_file():
    raise TableError(f"table {table_id!r} reads {path}, which is not committed")
  try:
    spec = json.loads(path.read_text())
    columns = [tuple(c) for c in spec["columns"]]
    lines = ["| model | " + " | ".join(c[1] for c in columns) + " | source |",
             "|---|" + "---:|" * len(columns) + "---|"]
    for row in spec["rows"]:
      cells = [("–" if row.get(key) is None else format(row[key], fmt)) for key, _, fmt in columns]
      lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row['source']} |")
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise TableError(f"{path} is not a table of published numbers ({type(e).__name__}: {e}); it needs "
                     "'columns' [[key, header, format]] and 'rows' [{'model', 'source', key: value}]"
                     ) from None
  where = f"results/published/{path.name}"
  table = "\n".join(lines)
  title = spec.get("title", "Published numbers")
  return (f"{table}\n\n{title}: as reported by the source of each row, not measured here. Generated by "
          f"`scripts/make_readme_tables.py` from `{where}`; do not edit by hand.\n")


MARKER = re.compile(r"<!-- table:(?P<id>[\w.-]+) -->\n(?P<body>.*?)<!-- /table:(?P=id) -->", re.S)
# Overrides that say where files are, not what was trained: left out of the config cell.
_PLACE_ONLY = ("data.data_dir=", "data.manual_dir=", "init.path=", "progress=")


def _place_only(override: str) -> bool:
  key = override.split("=", 1)[0]
  return override.startswith(_PLACE_ONLY) or ".classifiers." in key


class TableError(Exception):
  """Missing or inconsistent results, or broken markers; the message says how to fix it."""


def _config_matches(recorded: str, expected: str) -> bool:
  recorded, expected = recorded.removeprefix("./"), expected.removeprefix("./")
  return recorded == expected or recorded.endswith("/" + expected)


def load_rows(table_id: str, spec: dict, results: Path) -> list[tuple[list[str], dict]]:
  """``(leading cells, summary)`` per row of a table spec; every summary must exist and have been made
  with the row's config."""
  rows, missing = [], []
  for name, label, config, *prefix in spec["rows"]:
    path = results / spec["dataset"] / name / "summary.json"
    if not path.is_file():
      missing.append(f"{path} (mmjax sweep --config {config} --seeds 0,1,2 --workdir runs/sweeps/{name}, "
                     f"then copy its summary.json there)")
      continue
    try:
      summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise TableError(f"{path} is not JSON ({e.msg}); copy the sweep's summary.json again") from None
    if not _config_matches(str(summary.get("config", "")), config):
      raise TableError(f"{path} was made with config {summary.get('config')!r}, but table {table_id!r} "
                       f"labels it {config!r}: fix TABLES in {Path(__file__).name} or the results")
    if prefix:  # the row reads the metrics under a prefix, e.g. "fewshot/fast_binding/"
      summary = {**summary, "metrics": {k[len(prefix[0]):]: v for k, v in summary.get("metrics", {}).items()
                                        if k.startswith(prefix[0])}}
    extra = [o for o in summary.get("overrides", ()) if not _place_only(o)]
    cell = f"`{config}`" + (" " + " ".join(f"`{o}`" for o in extra) if extra else "")
    rows.append(([label, cell][:len(spec["lead"])], summary))
  if missing:
    raise TableError(f"table {table_id!r} needs results that are not committed:\n  " + "\n  ".join(missing))
  return rows


def render(table_id: str, spec: dict, results: Path) -> str:
  """The Markdown of one table: the table, then its footnote."""
  rows = load_rows(table_id, spec, results)
  table = markdown_table(rows, spec["columns"], lead=spec["lead"])
  where = f"results/{spec['dataset']}/"
  return (f"{table}\n\n{table_footnote([s for _, s in rows])} Generated by `scripts/make_readme_tables.py` "
          f"from `{where}`; do not edit by hand.\n")


def update(text: str, tables: dict, results: Path) -> tuple[str, list[str]]:
  """``text`` with every marked table rewritten, and the ids rewritten. A marker naming no table of
  ``tables``, or an unclosed marker, is an error."""
  opened = re.findall(r"<!-- table:([\w.-]+) -->", text)
  closed = {m.group("id") for m in MARKER.finditer(text)}
  for table_id in opened:
    if table_id not in closed:
      raise TableError(f"<!-- table:{table_id} --> has no closing <!-- /table:{table_id} --> on a later line")
    if table_id not in tables and table_id not in PUBLISHED:
      raise TableError(f"README marks a table {table_id!r} that TABLES does not define; known: "
                       f"{', '.join(sorted(tables))}")
  done = []

  def replace(match: re.Match) -> str:
    table_id = match.group("id")
    done.append(table_id)
    body = (render_published(table_id, results) if table_id in PUBLISHED
            else render(table_id, tables[table_id], results))
    return f"<!-- table:{table_id} -->\n{body}<!-- /table:{table_id} -->"

  return MARKER.sub(replace, text), done


def main(argv=None, tables: dict | None = None) -> int:
  """Rewrites (or with ``--check`` only compares) the README's tables; returns the exit status."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--readme", type=Path, default=ROOT / "README.md")
  p.add_argument("--results", type=Path, default=ROOT / "results", help="folder of committed summaries")
  p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is out of date")
  args = p.parse_args(argv)
  tables = TABLES if tables is None else tables
  text = args.readme.read_text()
  try:
    new, done = update(text, tables, args.results)
  except TableError as e:
    print(f"make_readme_tables: error: {e}", file=sys.stderr)
    return 2
  if not done:
    print(f"make_readme_tables: no <!-- table:ID --> markers in {args.readme}; nothing to do")
  if new == text:
    print(f"make_readme_tables: {args.readme} is up to date ({len(done)} table(s))")
    return 0
  if args.check:
    print(f"make_readme_tables: {args.readme} is out of date; run python scripts/make_readme_tables.py",
          file=sys.stderr)
    return 1
  tmp = args.readme.with_name(f".{args.readme.name}.tmp-{os.getpid()}")
  tmp.write_text(new)
  os.replace(tmp, args.readme)
  print(f"make_readme_tables: rewrote {', '.join(done)} in {args.readme}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
