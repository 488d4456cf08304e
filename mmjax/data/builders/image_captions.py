"""``image_captions``: image-caption pairs you downloaded yourself, as fixed-size RGB images + caption text.

Source (the TFDS manual directory: ``<data_dir>/downloads/manual`` unless ``--manual_dir`` says otherwise),
in one of two layouts:

(a) ``captions.jsonl`` + ``images/`` (e.g. Conceptual Captions or any folder of your own): one JSON object
    per line, ``{"image": "relative/path.jpg", "caption": "...", "split": "train"}``. ``image`` is a path
    relative to ``images/``; ``split`` is ``train`` (the default when absent), ``validation`` or ``test``.
    Several lines may name the same image (one example per line); blank lines are skipped.
(b) COCO captions: ``annotations/captions_train2017.json`` with the images in ``train2017/`` (-> split
    ``train``) and/or ``annotations/captions_val2017.json`` with ``val2017/`` (-> ``validation``), as
    unpacked from the COCO 2017 archives. One example per caption annotation (about 5 per image).

When both are present, ``captions.jsonl`` is used. Only splits with at least one pair are written.

Images are decoded with Pillow (EXIF orientation applied; transparency composited over white), converted to
RGB, and their central square is resized to ``S x S`` with bicubic filtering (the same as resizing the
shorter side to S and center-cropping). ``preprocess_image`` does exactly this for images given at
evaluation time. Configs: ``s64`` (default; stored as lossless PNG) and ``s224`` (stored as JPEG, quality
95, to keep the files small); e.g. ``image_captions/s224``.

Features
  * ``image``: uint8 ``[S, S, 3]``.
  * ``caption``: Text, the caption with runs of whitespace collapsed to one space (case kept).
  * ``image_id``: Text, layout (a) the ``image`` path as written in ``captions.jsonl``, (b) the COCO image
    id (e.g. "391895").
  * ``id``: int64, (a) the line number in ``captions.jsonl`` (from 1), (b) the COCO annotation id.
    ``array_record`` does not keep the write order: use ``id`` to identify examples.

Images and captions are checked before anything is written: a missing file or folder, malformed JSON, a
line without an image or caption, or an unknown split raises an error naming the file and line.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from mmjax.data.errors import DatasetError


class CaptionsError(DatasetError, ValueError):
  """A manual captions directory whose files do not hold what the builder expects."""


class CaptionsFileMissing(DatasetError, FileNotFoundError):
  """A file or folder the manual captions directory must have is missing."""

SPLITS = ("train", "validation", "test")
JSONL = "captions.jsonl"
IMAGE_DIR = "images"
COCO = {  # split -> (annotation file, image folder), relative to the manual directory
  "train": ("annotations/captions_train2017.json", "train2017"),
  "validation": ("annotations/captions_val2017.json", "val2017"),
}

_INSTRUCTIONS = f"""\
Put image-caption pairs in the TFDS manual directory (or pass --manual_dir), either as
  (a) {JSONL} (one JSON object per line: {{"image": "relative/path.jpg", "caption": "...", "split":
      "train" | "validation" | "test"}}, split optional, default train) with the images under {IMAGE_DIR}/, or
  (b) the COCO 2017 captions: {COCO["train"][0]} with {COCO["train"][1]}/
      and/or {COCO["validation"][0]} with {COCO["validation"][1]}/."""


@dataclasses.dataclass(eq=False)
class ImageCaptionsConfig(tfds.core.BuilderConfig):
  """A stored image size and the encoding of the stored images ("png" or "jpeg")."""

  image_size: int = 64
  encoding: str = "png"
  jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class Pair:
  """One image-caption pair before decoding; ``source`` (file and line) is for error messages."""

  split: str
  path: epath.Path
  image_id: str
  caption: str
  id: int
  source: str


def to_rgb(image: Image.Image) -> Image.Image:
  """``image`` upright (EXIF orientation) in RGB, with any transparency composited over white."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  return image.convert("RGB")


def preprocess_image(image: Image.Image, size: int) -> Image.Image:
  """RGB ``size x size``: the central square of ``image``, resized with bicubic filtering."""
  image = to_rgb(image)
  w, h = image.size
  m = min(w, h)
  left, top = (w - m) / 2, (h - m) / 2
  return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + m, top + m))


def load_image(path, size: int) -> np.ndarray:
  """The image file ``path`` preprocessed as the builder stores it: uint8 ``[size, size, 3]``."""
  with epath.Path(path).open("rb") as f, Image.open(f) as image:
    if image.format == "JPEG":
      image.draft("RGB", (size, size))  # decode at a reduced scale that is still >= size (fast)
    return np.asarray(preprocess_image(image, size))


def _encode(pair: Pair, config: ImageCaptionsConfig) -> bytes:
  try:
    array = load_image(pair.path, config.image_size)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise CaptionsError(f"cannot decode image {pair.path} (named by {pair.source}): {e}") from e
  buffer = io.BytesIO()
  if config.encoding == "jpeg":
    Image.fromarray(array).save(buffer, format="JPEG", quality=config.jpeg_quality)
  else:
    Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _collapse(text: str) -> str:
  return " ".join(text.split())


class _Exists:
  """Cached existence checks of image files (many captions share an image)."""

  def __init__(self):
    self._cache: dict[str, bool] = {}

  def __call__(self, path: epath.Path) -> bool:
    key = os.fspath(path)
    if key not in self._cache:
      self._cache[key] = path.is_file()
    return self._cache[key]


def read_jsonl(manual_dir: epath.Path) -> list[Pair]:
  """Parses and checks ``captions.jsonl`` of layout (a); every named image must exist under ``images/``."""
  path = manual_dir / JSONL
  images = manual_dir / IMAGE_DIR
  exists = _Exists()
  pairs = []
  with path.open("r", encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise CaptionsError(f"{where}: malformed JSON on line {n} ({e.msg}, column {e.colno})") from None
      if not isinstance(obj, dict):
        raise CaptionsError(f"{where}: expected a JSON object with \"image\" and \"caption\", got {obj!r}")
      name, text, split = obj.get("image"), obj.get("caption"), obj.get("split", "train")
      if not isinstance(name, str) or not name.strip():
        raise CaptionsError(f"{where}: \"image\" must be a path relative to {IMAGE_DIR}/, got {name!r}")
      if not isinstance(text, str) or not text.strip():
        raise CaptionsError(f"{where}: \"caption\" must be a non-empty string, got {text!r}")
      if split not in SPLITS:
        raise CaptionsError(f"{where}: unknown split {split!r}; expected one of {list(SPLITS)}")
      if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise CaptionsError(f"{where}: image {name!r} must be a relative path inside {images}/")
      if not pairs and not images.is_dir():
        raise CaptionsFileMissing(f"{path} names images relative to {images}/, which does not exist")
      file = images / name
      if not exists(file):
        hint = f" (paths are relative to {IMAGE_DIR}/)" if name.startswith(IMAGE_DIR + "/") else ""
        raise CaptionsFileMissing(f"{where}: image {name!r} not found: {file} does not exist{hint}")
      pairs.append(Pair(split, file, name, _collapse(text), n, where))
  if not pairs:
    raise CaptionsError(f"{path} holds no image-caption pairs")
  return pairs


def read_coco(manual_dir: epath.Path) -> list[Pair]:
  """Parses and checks the COCO 2017 caption annotations of layout (b) that are present."""
  exists = _Exists()
  pairs = []
  for split, (ann, folder) in COCO.items():
    path = manual_dir / ann
    if not path.exists():
      continue
    images = manual_dir / folder
    if not images.is_dir():
      raise CaptionsFileMissing(f"{path} needs its images in {images}/, which does not exist")
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise CaptionsError(f"{path}: malformed JSON on line {e.lineno} ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
      keys = sorted(data) if isinstance(data, dict) else type(data).__name__
      raise CaptionsError(f"{path}: expected a COCO captions file with 'images' and 'annotations', got "
                          f"{keys}")
    try:
      files = {img["id"]: img["file_name"] for img in data["images"]}
    except (KeyError, TypeError) as e:
      raise CaptionsError(f"{path}: every entry of 'images' needs 'id' and 'file_name' ({e!r})") from None
    for k, a in enumerate(data["annotations"]):
      where = f"{path}: annotation {k}"
      if not isinstance(a, dict) or not {"id", "image_id", "caption"} <= set(a):
        raise CaptionsError(f"{where} needs 'id', 'image_id' and 'caption', got {a!r}")
      where = f"{path}: annotation {a['id']}"
      if a["image_id"] not in files:
        raise CaptionsError(f"{where} names image_id {a['image_id']!r}, which 'images' does not list")
      if not isinstance(a["caption"], str) or not a["caption"].strip():
        raise CaptionsError(f"{where}: 'caption' must be a non-empty string, got {a['caption']!r}")
      file = images / files[a["image_id"]]
      if not exists(file):
        raise CaptionsFileMissing(f"{where} (image_id {a['image_id']}): image {file} does not exist")
      pairs.append(Pair(split, file, str(a["image_id"]), _collapse(a["caption"]), int(a["id"]), where))
  return pairs


class ImageCaptions(tfds.core.GeneratorBasedBuilder):
  """Builder for ``image_captions`` (image-caption pairs from a manual directory)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
    ImageCaptionsConfig(name="s64", image_size=64, encoding="png", description="64x64, PNG."),
    ImageCaptionsConfig(name="s224", image_size=224, encoding="jpeg", description="224x224, JPEG q95."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "s64"
  NUM_THREADS = 8  # images decoded in parallel (Pillow releases the GIL while decoding and resizing)

  def __init__(self, *, file_format=None, **kwargs):
    """Same as the base builder, but ``file_format`` defaults to array_record."""
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata and feature specification."""
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(size, size, 3), encoding_format=self.builder_config.encoding),
          "caption": tfds.features.Text(),
          "image_id": tfds.features.Text(),
          "id": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=None,
    )

  def _manual_dir(self, dl_manager) -> epath.Path:
    """The manual directory, or an error saying where it was expected and what to put there."""
    try:
      return epath.Path(dl_manager.manual_dir)
    except AssertionError:  # tfds: the directory is missing or empty
      where = getattr(dl_manager, "_manual_dir", None)
      state = "is empty" if where and epath.Path(where).is_dir() else "does not exist"
      raise CaptionsFileMissing(
        f"{self.name}: the manual directory {where or '(none given)'} {state}.\n{_INSTRUCTIONS}"
      ) from None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Reads and checks the captions of the layout found; returns one generator per non-empty split."""
    manual_dir = self._manual_dir(dl_manager)
    if (manual_dir / JSONL).exists():
      if any((manual_dir / ann).exists() for ann, _ in COCO.values()):
        logging.warning("%s: both %s and COCO annotations found in %s; using %s", self.name, JSONL,
                        manual_dir, JSONL)
      pairs = read_jsonl(manual_dir)
    elif any((manual_dir / ann).exists() for ann, _ in COCO.values()):
      pairs = read_coco(manual_dir)
    else:
      found = sorted(p.name + ("/" if p.is_dir() else "") for p in manual_dir.iterdir())
      shown = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") or "nothing"
      raise CaptionsFileMissing(
        f"{self.name}: no captions in {manual_dir}: neither {JSONL} nor "
        f"{' / '.join(a for a, _ in COCO.values())} exists (found: {shown}).\n{_INSTRUCTIONS}"
      )
    by_split = collections.defaultdict(list)
    for pair in pairs:
      by_split[pair.split].append(pair)
    for split in SPLITS:
      if split in by_split:
        n_images = len({os.fspath(p.path) for p in by_split[split]})
        logging.info("%s/%s: %s: %d pairs of %d images to write", self.name, self.builder_config.name,
                     split, len(by_split[split]), n_images)
    return {split: self._generate_examples(by_split[split], split) for split in SPLITS if split in by_split}

  def _generate_examples(self, pairs: list[Pair], split: str):
    """Yields ``(id, example)``, decoding each image once (in parallel threads) for all its captions."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
      groups.setdefault(os.fspath(pair.path), []).append(pair)
    config = self.builder_config
    count = 0
    with concurrent.futures.ThreadPoolExecutor(self.NUM_THREADS) as pool:
      pending = collections.deque()
      for group in groups.values():
        pending.append((group, pool.submit(_encode, group[0], config)))
        if len(pending) < 4 * self.NUM_THREADS:
          continue
        count += yield from self._emit(*pending.popleft())
      while pending:
        count += yield from self._emit(*pending.popleft())
    logging.info("%s/%s: wrote %d pairs of %d images to split %s", self.name, config.name, count,
                 len(groups), split)

  @staticmethod
  def _emit(group: list[Pair], future):
    """Yields the examples of one image's captions; returns how many."""
    image = future.result()
    for pair in group:
      yield pair.id, {"image": image, "caption": pair.caption, "image_id": pair.image_id, "id": pair.id}
    return len(group)
