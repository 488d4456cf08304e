"""Input pipeline: TFDS data source -> grain -> dicts of numpy arrays, sharded by process.

* Training: this process's shard of the split (``examples[process_index::process_count]``), shuffled
  with the seed and reshuffled every epoch (grain ``shuffle().repeat()``), variable-length features padded
  to ``max_lengths`` with ``<name>_mask`` booleans, batched with the remainder dropped. The dataset is
  random-access, so batch ``s`` is a pure function of ``(seed, s)``: resuming at step ``s`` starts at
  batch ``s`` with no iterator state to checkpoint.
* Evaluation: every example exactly once, in order; the last batch is filled with copies of an example
  whose ``_valid`` flag is 0, so metrics count each real example once and shapes stay static.

Only the array_record format is used (read by ``tfds.data_source``), so TensorFlow is never needed.
Features: ``uint8`` arrays become ``float32`` in [0, 1]; other integers ``int32``; floats ``float32``;
string features are dropped (they cannot go on a device).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds

import mmjax.data.builders  # noqa: F401  (registers mmjax's TFDS builders)
from mmjax.data.errors import DatasetError

# datasets whose data ships inside the package (built on first use), with any of their builder configs
EMBEDDED = ("digits_av", "digits_av_captions", "digits_av_qa", "digits_av_text")


def _not_the_unprepared_warning(record) -> bool:
  """Drops tfds's warning that a dataset folder has no dataset_info.json yet: mmjax asks whether a dataset
  is prepared itself, and the warning would precede every build and every "not prepared" error."""
  return not str(record.msg).startswith("Variant folder %s has no")


logging.getLogger("absl").addFilter(_not_the_unprepared_warning)


def is_embedded(name: str) -> bool:
  """Whether dataset ``name`` (``"builder"`` or ``"builder/config"``, optionally ``:version``) ships inside
  the package."""
  return name.split("/")[0].split(":")[0] in EMBEDDED


def get_builder(name: str, data_dir: str | None = None):
  """The TFDS builder ``name`` writing/reading array_record files under ``data_dir``."""
  try:
    return tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(
        f"unknown dataset {name!r}. mmjax's embedded datasets: {list(EMBEDDED)}; other names must be "
        "TFDS builders (see `mmjax data build --help`)."
    ) from None


def needs_download(builder) -> bool:
  """Whether preparing ``builder`` means downloading: a stock TFDS builder without manual-download
  instructions (mmjax's own builders read embedded data or files the user put in a manual directory)."""
  from mmjax.data import builders

  own = tuple(getattr(builders, n) for n in builders.__all__)
  return not isinstance(builder, own) and not builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def _download_error(builder, name: str) -> DatasetError:
  """mmjax never downloads: how to prepare ``name`` elsewhere and copy it here."""
  full = builder.info.full_name  # name[/config]/version: the folder under a data dir
  return DatasetError(
      f"dataset {name!r} needs a download, which mmjax does not do. On a machine with network access, "
      f"prepare it as array_record (`pip install tensorflow-datasets`, then `tfds build "
      f"{full.rsplit('/', 1)[0]} --file_format=array_record`) and copy the folder it writes there, "
      f"<data dir>/{full}, to {builder.data_path}. Or use a dataset mmjax ships: see `mmjax data list`."
  )


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None, *,
            overwrite: bool = False):
  """Builds dataset ``name`` (a no-op when already prepared, unless ``overwrite``) and returns its builder.

  ``manual_dir`` is where datasets that users download themselves (e.g. ``cmu_mosei``) find their files.
  A prepared version is checked cheaply (see :meth:`CheckedSource.check`); ``overwrite`` builds it again
  (e.g. after a damaged file), deleting the old one only once the new one is complete. A failed build
  leaves the data directory as it was. Datasets that need a download are refused before anything is
  written (mmjax does not download).
  """
  builder = get_builder(name, data_dir)
  if builder.is_prepared() and not overwrite:
    for split in builder.info.splits:  # cheap: the first example of each file (a damaged one says so)
      checked_source(builder, name, split, data_dir)
    return builder
  if needs_download(builder):
    raise _download_error(builder, name)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  old = builder.data_path if builder.is_prepared() else None
  with _unchanged_on_error(builder), _set_aside(old):
    builder = get_builder(name, data_dir)  # a fresh builder: the old one read the info of the old version
    builder.download_and_prepare(file_format="array_record", download_config=config)
  return builder


def _paths(root: Path, name: str) -> set[Path]:
  """The paths a build of dataset ``name`` may add under data dir ``root``: the root, the dataset's folder
  (all of it) and ``downloads`` two levels deep (tfds creates ``downloads/extracted``). Other datasets'
  folders are not listed, so a failed build never touches them."""
  if not root.exists():
    return set()
  paths = {root, root / name, root / "downloads"}
  for dirpath, dirnames, filenames in os.walk(root / name):
    paths.update(Path(dirpath) / f for f in (*dirnames, *filenames))
  if (root / "downloads").is_dir():
    for entry in (root / "downloads").iterdir():
      paths.add(entry)
      if entry.is_dir():
        paths.update(entry.iterdir())
  return {p for p in paths if p.exists() or p.is_symlink()}


@contextlib.contextmanager
def _unchanged_on_error(builder):
  """Undoes what a failing build wrote to the data dir: the folders and files it added (tfds leaves the
  dataset's folders, its ``.config`` and ``downloads/``), and the ``.config`` files it rewrote."""
  root, name = Path(os.fspath(builder.data_dir_root)), builder.name
  before = _paths(root, name)
  config_dir = root / name / ".config"
  saved = {p: p.read_bytes() for p in config_dir.iterdir() if p.is_file()} if config_dir.is_dir() else {}
  try:
    yield
  except BaseException:
    added = _paths(root, name) - before
    for path in sorted(added):
      if path.parent in added:  # removed with its new parent
        continue
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      else:
        path.unlink(missing_ok=True)
    for path, data in saved.items():
      if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    raise


@contextlib.contextmanager
def _set_aside(path):
  """Moves the prepared folder ``path`` (if any) out of the way for the body; deletes it when the body
  succeeds and puts it back when it fails."""
  if path is None:
    yield
    return
  path = Path(os.fspath(path))
  aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
  os.replace(path, aside / path.name)
  try:
    yield
  except BaseException:
    if path.exists():
      shutil.rmtree(path)
    os.replace(aside / path.name, path)
    aside.rmdir()
    raise
  shutil.rmtree(aside)


def build_notes(builder) -> list[str]:
  """Lines a builder keeps about how its prepared data differ from the source files (e.g. the non-finite
  values set to 0 by the MulT builders), for ``mmjax data build`` to print."""
  notes = getattr(builder, "build_notes", None)
  return list(notes()) if notes else []


def rebuild_hint(builder, name: str, data_dir: str | None) -> str:
  """How to prepare dataset ``name`` again, replacing its prepared version."""
  if needs_download(builder):
    return (f"Prepare it again on a machine with network access and copy the folder to {builder.data_path} "
            "(mmjax does not download).")
  where = f" --data_dir {data_dir}" if data_dir else ""
  manual = " --manual_dir DIR" if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else ""
  return f"Rebuild it: `mmjax data build {name}{where}{manual} --overwrite`."


class CheckedSource:
  """A split's data source whose read errors (an array_record file damaged, truncated or missing) become
  :class:`DatasetError` naming the file and how to rebuild it. ``files``: ``(first index, path)`` per file,
  in index order."""

  def __init__(self, source, files: list[tuple[int, str]], hint: str):
    self.source = source
    self.files = files
    self.hint = hint

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    try:
      return self.source[index]
    except (RuntimeError, OSError) as e:
      raise self._error(index, e) from None

  def __getitems__(self, indices):
    try:
      return self.source.__getitems__(indices)
    except (RuntimeError, OSError) as e:
      raise self._error(indices[0] if len(indices) else 0, e) from None

  def _error(self, index: int, error: Exception) -> DatasetError:
    starts = [start for start, _ in self.files]
    path = self.files[max(bisect.bisect_right(starts, int(index) % max(len(self), 1)) - 1, 0)][1]
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DatasetError(f"cannot read {path}: the file is damaged, truncated or missing ({detail}). "
                        f"{self.hint}")

  def check(self) -> CheckedSource:
    """Reads the first example of every file: cheap (no file is read through), and it finds truncated files,
    damaged headers and footers, and missing files."""
    for start, _ in self.files:
      self[start]
    return self


def checked_source(builder, name: str, split: str, data_dir: str | None = None) -> CheckedSource:
  """The checked (:meth:`CheckedSource.check`) data source of ``split`` of a prepared ``builder``."""
  files, start = [], 0
  for instruction in builder.info.splits[split].file_instructions:
    if instruction.take:
      files.append((start, instruction.filename))
      start += instruction.take
  source = builder.as_data_source(split=split)
  return CheckedSource(source, files, rebuild_hint(builder, name, data_dir)).check()


def open_split(data_cfg, split: str):
  """The random-access data source of ``split`` (a :class:`CheckedSource`); prepares embedded datasets when
  ``data_cfg.prepare``."""
  builder = get_builder(data_cfg.name, data_cfg.data_dir)
  if not builder.is_prepared():
    if is_embedded(data_cfg.name) and data_cfg.prepare:
      builder = prepare(data_cfg.name, data_cfg.data_dir)
    elif needs_download(builder):
      raise _download_error(builder, data_cfg.name)
    else:
      manual = " --manual_dir DIR" if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else ""
      raise DatasetError(
          f"dataset {data_cfg.name!r} is not prepared in {builder.data_dir}. Run "
          f"`mmjax data build {data_cfg.name}{manual}` (add --data_dir to choose where), then try again."
      )
  if split not in builder.info.splits:
    raise DatasetError(
        f"dataset {data_cfg.name!r} has no split {split!r}; splits: {sorted(builder.info.splits)}"
    )
  check_max_lengths(builder.info.features, dict(data_cfg.max_lengths), data_cfg.name,
                    derived_features(data_cfg))
  return checked_source(builder, data_cfg.name, split, data_cfg.data_dir)


def derived_features(data_cfg) -> list[str]:
  """Variable-length features the transforms add (``<tokenize_field>_tokens`` with ``data.tokenizer``)."""
  spec = data_cfg.get("tokenizer", "")  # data sections built by hand may lack the tokenizer fields
  return [f"{data_cfg.get('tokenize_field', 'caption')}_tokens"] if spec else []


def check_max_lengths(features, max_lengths: dict, name: str, derived=()) -> None:
  """Every variable-length feature (and every ``derived`` one) needs a padded length in
  ``data.max_lengths``, and vice versa."""
  variable = sorted(k for k, f in features.items() if getattr(f, "shape", None) and None in f.shape)
  variable += list(derived)
  features = {**features, **{k: None for k in derived}}
  missing = [k for k in variable if k not in max_lengths]
  if missing:
    raise DatasetError(
        f"dataset {name!r} has variable-length features {missing}; set data.max_lengths for them "
        f"(e.g. --config.data.max_lengths.{missing[0]}=128)"
    )
  unknown = sorted(set(max_lengths) - set(features.keys()))
  if unknown:
    raise DatasetError(f"data.max_lengths names {unknown}, which dataset {name!r} does not have "
                       f"(features: {sorted(features.keys())})")


class PadAndCast:
  """Per-example transform: pad variable-length features, add masks and ``_valid``, cast dtypes."""

  def __init__(self, max_lengths: dict, truncate: bool):
    self.max_lengths = {k: int(v) for k, v in max_lengths.items()}
    self.truncate = truncate

  def __call__(self, example: dict) -> dict:
    out = {"_valid": np.float32(1.0)}
    for key, value in example.items():
      value = np.asarray(value)
      if value.dtype.kind in "OSU":
        continue
      if key in self.max_lengths:
        length, n = self.max_lengths[key], value.shape[0]
        if n > length:
          if not self.truncate:
            raise DatasetError(
                f"feature {key!r} has {n} steps but data.max_lengths.{key} is {length}; raise the "
                "length or set data.truncate=True"
            )
          value, n = value[:length], length
        padded = np.zeros((length,) + value.shape[1:], value.dtype)
        padded[:n] = value
        out[f"{key}_mask"] = np.arange(length) < n
        value = padded
      if value.dtype == np.uint8:
        value = value.astype(np.float32) / 255.0
      elif value.dtype.kind in "iu":
        value = value.astype(np.int32)
      elif value.dtype.kind == "f":
        value = value.astype(np.float32)
      out[key] = value
    return out


class Tokenize:
  """Per-example transform: ``<field>_tokens`` int32 ``[T]`` from the text feature ``field``, with the
  GPT-2 BPE of a local Hugging Face directory (``data.tokenizer = "gpt2:DIR"``), ending with
  ``<|endoftext|>`` (the caption's end, as the Frozen LM is trained to produce)."""

  def __init__(self, spec: str, field: str):
    kind, _, path = spec.partition(":")
    if kind != "gpt2" or not path:
      raise DatasetError(f"data.tokenizer must be 'gpt2:DIR' (a directory with vocab.json and merges.txt); "
                         f"got {spec!r}")
    from mmjax.data.gpt2_tokenizer import GPT2Tokenizer

    self.tokenizer = GPT2Tokenizer.from_dir(path)
    self.field = field

  def __call__(self, example: dict) -> dict:
    if self.field not in example:
      raise DatasetError(f"data.tokenize_field {self.field!r} is not a feature; features: {sorted(example)}")
    text = example[self.field]
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    ids = self.tokenizer.encode(text) + [self.tokenizer.eos_id]
    return {**example, f"{self.field}_tokens": np.asarray(ids, np.int32)}


def example_transform(data_cfg):
  """The per-example transform of ``data_cfg``: tokenization (when ``data.tokenizer`` is set), then
  :class:`PadAndCast`."""
  pad = PadAndCast(dict(data_cfg.max_lengths), data_cfg.truncate)
  if not data_cfg.get("tokenizer", ""):
    return pad
  tokenize = Tokenize(data_cfg.tokenizer, data_cfg.get("tokenize_field", "caption"))
  return lambda example: pad(tokenize(example))


def example_from_features(data_cfg, batch_size: int = 1, seed: int | None = None) -> dict:
  """A batch with the shapes and dtypes the pipeline would produce for ``data_cfg``, built from the
  dataset's feature description alone (no data needed): for model initialisation, shape checks and
  synthetic benchmarks. Zeros (sequences one step long, then padded), or with ``seed`` standard-normal
  float features over the full padded length."""
  builder = get_builder(data_cfg.name, data_cfg.data_dir)
  features = builder.info.features
  check_max_lengths(features, dict(data_cfg.max_lengths), data_cfg.name, derived_features(data_cfg))
  example = {}
  for key, feature in features.items():
    dtype = np.dtype(feature.np_dtype)
    if dtype.kind in "OSU":
      continue
    example[key] = np.zeros(tuple(1 if d is None else d for d in feature.shape), dtype)
  for key in derived_features(data_cfg):  # the tokens the Tokenize transform adds
    example[key] = np.zeros((1,), np.int32)
  pad = PadAndCast(dict(data_cfg.max_lengths), data_cfg.truncate)
  if seed is None:
    return stack([pad(example)] * batch_size)
  rng = np.random.default_rng(seed)
  lengths = dict(data_cfg.max_lengths)
  for key, value in example.items():
    if key in lengths:
      value = np.zeros((lengths[key],) + value.shape[1:], value.dtype)
    if value.dtype.kind == "f":
      value = rng.standard_normal(value.shape).astype(value.dtype)
    example[key] = value
  return stack([pad(example)] * batch_size)


def stack(examples) -> dict:
  """Stacks a list of example dicts into a batch dict."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """This process's share of the global batch (a clear error when it does not divide)."""
  if global_batch_size % process_count:
    raise DatasetError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
  return global_batch_size // process_count


def parse_labels(spec) -> tuple[int, ...]:
  """``"0,1,2"`` (``data.keep_labels``) -> ``(0, 1, 2)``; ``""`` -> ``()`` (keep every label)."""
  if isinstance(spec, (list, tuple)):
    return tuple(int(v) for v in spec)
  try:
    return tuple(int(p) for p in str(spec or "").split(",") if p.strip())
  except ValueError:
    raise DatasetError(f"data.keep_labels must be comma-separated integer labels, e.g. '0,1,2'; got {spec!r}"
                       ) from None


class Subset:
  """The examples ``indices`` of a random-access ``source``, in that order."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[index])]


def keep_labels(source, labels: tuple[int, ...], name: str, split: str, key: str = "label"):
  """``source`` restricted to the examples whose ``key`` is in ``labels`` (all of it when ``labels`` is
  empty), e.g. to hold classes out of training for zero-shot evaluation."""
  if not labels:
    return source
  values = []
  for i in range(len(source)):
    example = source[i]
    if key not in example:
      raise DatasetError(f"data.keep_labels needs a {key!r} feature; dataset {name!r} has {sorted(example)}")
    values.append(int(np.asarray(example[key])))
  indices = np.nonzero(np.isin(np.asarray(values), np.asarray(labels)))[0]
  if not len(indices):
    kept = ",".join(map(str, labels))
    raise DatasetError(f"data.keep_labels={kept} keeps no example of split {split!r} of {name!r} (its "
                       f"labels: {sorted(set(values))})")
  return Subset(source, indices)


def train_batches(data_cfg, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Endless iterator of this process's training batches, starting at batch ``start_step`` (only the
  examples of ``data.keep_labels`` when it is set)."""
  source = open_split(data_cfg, data_cfg.train_split)
  source = keep_labels(source, parse_labels(data_cfg.get("keep_labels", "")), data_cfg.name,
                       data_cfg.train_split)
  local = local_batch_size(global_batch_size, process_count)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) < local:
    raise DatasetError(f"split {data_cfg.train_split!r} has {len(ds)} examples for this process, fewer "
                       f"than one batch of {local}")
  ds = ds.shuffle(seed=seed).repeat(None).map(example_transform(data_cfg))
  ds = ds.batch(local, drop_remainder=True, batch_fn=stack)
  ds = ds[start_step:]
  read = grain.ReadOptions(num_threads=max(int(data_cfg.num_threads), 1), prefetch_buffer_size=4)
  return iter(ds.to_iter_dataset(read))


def eval_batches(data_cfg, split: str, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Every example of ``split`` once (this process's shard), padded to full batches with ``_valid = 0``.

  All processes yield the same number of batches, as a global step needs every process."""
  source = open_split(data_cfg, split)
  local = local_batch_size(global_batch_size, process_count)
  pad = example_transform(data_cfg)
  ds = grain.MapDataset.source(source)[process_index::process_count].map(pad)
  num_batches = math.ceil(math.ceil(len(source) / process_count) / local)
  filler = None
  for b in range(num_batches):
    examples = [ds[i] for i in range(b * local, min((b + 1) * local, len(ds)))]
    if len(examples) < local:
      if filler is None:
        filler = dict(pad(source[0]), _valid=np.float32(0.0))
      examples += [filler] * (local - len(examples))
    yield stack(examples)


def list_datasets(data_dir: str | None = None) -> list[dict]:
  """mmjax's TFDS datasets: ``{"name", "config", "embedded", "manual", "prepared", "splits"}`` per builder
  config (``config`` is "" for builders without configs); ``prepared`` says whether it is built in
  ``data_dir`` (default: the TFDS data directory)."""
  from mmjax.data import builders

  rows = []
  for cls_name in builders.__all__:
    cls = getattr(builders, cls_name)
    configs = [c.name for c in (getattr(cls, "BUILDER_CONFIGS", None) or [])] or [""]
    for config in configs:
      name = f"{cls.name}/{config}" if config else cls.name
      builder = get_builder(name, data_dir)
      prepared = builder.is_prepared()
      splits = {k: v.num_examples for k, v in builder.info.splits.items()} if prepared else {}
      rows.append({"name": cls.name, "config": config, "embedded": is_embedded(cls.name),
                   "manual": bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)),
                   "prepared": prepared,
                   "splits": splits,
                   "data_dir": str(builder.data_dir)})
  return rows
