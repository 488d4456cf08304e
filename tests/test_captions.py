"""The captioning datasets: the embedded ``digits_av_captions`` and ``image_captions`` (jsonl and COCO)."""

import json
import logging
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import pipeline
from mmjax.data.builders import digits_av_captions as dac
from mmjax.data.builders import image_captions as ic
from mmjax.data.builders.digits_av import LABEL_NAMES
from mmjax.data.vocab import Vocabulary

EXPECTED_SPLITS = {"train": 1259, "validation": 179, "test": 359}
RED, GREEN, BLUE, WHITE, BLACK, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (
  255, 255, 0)


def text(x) -> str:
  """Text features come back from data sources as bytes."""
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def read_all(builder, split) -> list[dict]:
  """Every example of ``split``, sorted by ``id`` (array_record does not keep the write order)."""
  src = builder.as_data_source(split=split)
  return sorted((src[i] for i in range(len(src))), key=lambda e: int(e["id"]))


def data_cfg(data_dir, name, max_lengths, prepare=False):
  """The ``config.data`` fields the pipeline reads."""
  return ml_collections.ConfigDict({
    "name": name, "data_dir": str(data_dir), "train_split": "train", "max_lengths": max_lengths,
    "truncate": False, "prepare": prepare, "num_threads": 1,
  })


# --- digits_av_captions -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
  """``digits_av_captions`` prepared into a temporary directory: ``(builder, seconds to build)``."""
  start = time.perf_counter()
  builder = dac.DigitsAvCaptions(data_dir=str(tmp_path_factory.mktemp("tfds_captions")))
  builder.download_and_prepare()
  return builder, time.perf_counter() - start


def test_captions_vocabulary():
  """Specials first, then sorted words: digit names, template, nonsense and prompt words, nothing else."""
  vocab = Vocabulary.digits_captions()
  tokens = vocab.tokens
  assert tokens[:4] == ["<pad>", "<unk>", dac.BOS, dac.EOS]
  assert tokens[dac.BOS_ID] == "<bos>" and tokens[dac.EOS_ID] == "."
  assert vocab.pad_id == 0 and vocab.unk_id == 1
  assert tokens[4:] == sorted(tokens[4:])
  template_words = {w for t in dac.caption_templates() for w in t.split() if w not in ("{digit}", ".")}
  expected = set(LABEL_NAMES) | template_words | set(dac.NONSENSE_WORDS) | set(dac.PROMPT_WORDS)
  assert set(tokens[4:]) == expected and len(vocab) == 4 + len(expected) == 45
  assert len(dac.NONSENSE_WORDS) >= 10 and not set(dac.NONSENSE_WORDS) & (set(LABEL_NAMES) | template_words)
  ids = vocab.encode("this is a dax .")
  assert ids[-1] == dac.EOS_ID and vocab.decode(ids) == "this is a dax ."
  with pytest.raises(ValueError, match=r"\['seventeen'\].*not in the digits captions vocabulary"):
    dac.encode_caption("this is a seventeen .")


def test_caption_templates():
  """The prompt template comes first; every template names the digit once and ends with " ."."""
  templates = dac.caption_templates()
  assert templates[0] == dac.PROMPT_TEMPLATE == "this is a {digit} ." and dac.PROMPT_PREFIX == "this is a"
  assert len(templates) >= 4 and len(set(templates)) == len(templates)
  for t in templates:
    assert t.split().count("{digit}") == 1 and t.endswith(" .")
  assert dac.caption(7, 0) == templates[dac.template_index(0)].format(digit="seven")
  with pytest.raises(ValueError, match="label must be a digit"):
    dac.caption(10, 0)


def test_digits_av_captions_match_digits_av(captions, data_dir):
  """Same splits and ids as digits_av, the same images and labels; captions name the digit."""
  builder, _ = captions
  digits = tfds.builder("digits_av", data_dir=data_dir)
  assert builder.info.file_format.value == "array_record"
  feats = builder.info.features
  assert feats["image"].shape == (8, 8) and feats["image"].np_dtype == np.uint8
  assert feats["caption_tokens"].shape == (None,) and feats["caption_tokens"].np_dtype == np.int32
  assert feats["label"].names == list(LABEL_NAMES)
  assert {k: builder.info.splits[k].num_examples for k in EXPECTED_SPLITS} == EXPECTED_SPLITS
  vocab = Vocabulary.digits_captions()
  used = set()
  for split in EXPECTED_SPLITS:
    ours, theirs = read_all(builder, split), read_all(digits, split)
    assert [int(e["id"]) for e in ours] == [int(e["id"]) for e in theirs]
    for ex, ref in zip(ours, theirs, strict=True):
      assert set(ex) == {"image", "label", "caption", "caption_tokens", "id"}
      assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8)
      np.testing.assert_array_equal(ex["image"], ref["image"])
      assert int(ex["label"]) == int(ref["label"])
      caption, tokens = text(ex["caption"]), ex["caption_tokens"]
      assert tokens.dtype == np.int32 and 4 <= len(tokens) <= 8
      assert vocab.decode(tokens) == caption == dac.caption(int(ex["label"]), int(ex["id"]))
      assert tokens[-1] == dac.EOS_ID and dac.BOS_ID not in tokens and vocab.unk_id not in tokens
      assert LABEL_NAMES[int(ex["label"])] in caption.split()
      assert sum(w in LABEL_NAMES for w in caption.split()) == 1
      used.add(dac.template_index(int(ex["id"])))
  assert used == set(range(len(dac.caption_templates())))  # every template occurs


def test_digits_av_captions_deterministic_and_embedded(captions, tmp_path):
  """A second build (through the pipeline, as an embedded dataset) gives the same captions; text_corpus
  agrees with both."""
  builder, _ = captions
  cfg = data_cfg(tmp_path, "digits_av_captions", {"caption_tokens": 8}, prepare=True)
  for split, n in EXPECTED_SPLITS.items():
    src = pipeline.open_split(cfg, split)
    assert len(src) == n
    again = sorted((src[i] for i in range(n)), key=lambda e: int(e["id"]))
    first = read_all(builder, split)
    assert [text(e["caption"]) for e in again] == [text(e["caption"]) for e in first]
    corpus = dac.text_corpus(split)
    assert corpus == [e["caption_tokens"].tolist() for e in first]
    assert all(isinstance(t, int) for t in corpus[0])
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    dac.text_corpus("valid")


def test_all_templates_config_has_every_caption_of_every_image(captions, tmp_path):
  """``digits_av_captions/all_templates`` (through the pipeline, as an embedded dataset): each image of a
  split once per template, same images and labels as the default config; the fewshot pool dedupes by id."""
  from mmjax.evaluators.fewshot import class_pool

  builder, _ = captions
  assert builder.builder_config.name == "one_template"  # the default config is the 1.0.0 data
  cfg = data_cfg(tmp_path, "digits_av_captions/all_templates", {"caption_tokens": 8}, prepare=True)
  templates = dac.caption_templates()
  for split, n in EXPECTED_SPLITS.items():
    src = pipeline.open_split(cfg, split)
    assert len(src) == n * len(templates)
    by_id = {}
    for i in range(len(src)):
      by_id.setdefault(int(src[i]["id"]), []).append(src[i])
    one = {int(e["id"]): e for e in read_all(builder, split)}
    assert set(by_id) == set(one)
    for i, group in list(by_id.items())[::50]:
      label = int(one[i]["label"])
      assert sorted(text(e["caption"]) for e in group) == sorted(t.format(digit=LABEL_NAMES[label])
                                                                 for t in templates)
      for e in group:
        np.testing.assert_array_equal(e["image"], one[i]["image"])
        assert int(e["label"]) == label
  pool = class_pool(cfg, "validation")
  assert sum(len(v) for v in pool.values()) == EXPECTED_SPLITS["validation"]


def test_digits_av_captions_through_the_pipeline(captions):
  """PadAndCast pads ``caption_tokens`` with a mask, scales the image to float32 [0, 1], drops strings."""
  builder, _ = captions
  cfg = data_cfg(builder.data_dir.rsplit("/digits_av_captions", 1)[0], "digits_av_captions",
                 {"caption_tokens": 10})
  src = pipeline.open_split(cfg, "validation")
  pad = pipeline.PadAndCast(dict(cfg.max_lengths), truncate=False)
  for i in range(0, len(src), 40):
    raw, ex = src[i], pad(src[i])
    assert set(ex) == {"_valid", "image", "label", "caption_tokens", "caption_tokens_mask", "id"}
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (8, 8)
    assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    np.testing.assert_allclose(ex["image"], raw["image"] / 255.0, rtol=1e-6)
    n = len(raw["caption_tokens"])
    assert ex["caption_tokens"].shape == (10,) and ex["caption_tokens"].dtype == np.int32
    assert ex["caption_tokens_mask"].tolist() == [True] * n + [False] * (10 - n)
    assert ex["caption_tokens"][:n].tolist() == raw["caption_tokens"].tolist()
    assert not ex["caption_tokens"][n:].any()
  batch = next(pipeline.train_batches(cfg, global_batch_size=4, seed=0))
  assert batch["caption_tokens"].shape == (4, 10) and batch["image"].shape == (4, 8, 8)
  with pytest.raises(pipeline.DatasetError, match=r"\['caption_tokens'\]"):
    pipeline.open_split(data_cfg(cfg.data_dir, "digits_av_captions", {}), "train")


# --- image_captions: fixtures ----------------------------------------------------------------------------


def quadrants() -> np.ndarray:
  """300 x 150 (W x H): black sides around a central square of red / green (top), blue / white (bottom)."""
  a = np.zeros((150, 300, 3), np.uint8)
  a[:75, 75:150], a[:75, 150:225], a[75:, 75:150], a[75:, 150:225] = RED, GREEN, BLUE, WHITE
  return a


def tall() -> np.ndarray:
  """40 x 90 (W x H), smaller than 64: a yellow central square between black bands above and below."""
  a = np.zeros((90, 40, 3), np.uint8)
  a[25:65] = YELLOW
  return a


def write_images(images):
  """Writes PNG / JPEG files of several sizes and modes under ``images``; returns their relative names."""
  (images / "sub").mkdir(parents=True)
  Image.fromarray(quadrants()).save(images / "quad.png")
  Image.fromarray(tall()).save(images / "tall.jpg", quality=95)
  Image.fromarray(np.full((100, 120), 128, np.uint8), mode="L").save(images / "sub" / "gray.png")
  rgba = np.zeros((80, 80, 4), np.uint8)
  rgba[..., 2], rgba[:, 40:, 3] = 255, 255  # left half transparent, right half opaque blue
  Image.fromarray(rgba, mode="RGBA").save(images / "rgba.png")
  return ["quad.png", "tall.jpg", "sub/gray.png", "rgba.png"]


def write_jsonl(manual, lines):
  """``captions.jsonl`` from a list of dicts (or raw strings, written as they are)."""
  rows = [r if isinstance(r, str) else json.dumps(r) for r in lines]
  (manual / "captions.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


JSONL_LINES = [
  {"image": "quad.png", "caption": "four  coloured\nsquares", "split": "train"},  # line 1
  {"image": "quad.png", "caption": "a square in four colours"},  # line 2: default split train
  {"image": "tall.jpg", "caption": "a yellow band", "split": "validation"},  # line 3
  "",  # line 4: blank, skipped
  {"image": "sub/gray.png", "caption": "grey", "split": "test"},  # line 5
  {"image": "rgba.png", "caption": "half blue", "split": "train"},  # line 6
  {"image": "quad.png", "caption": "colours again", "split": "validation"},  # line 7
]


def build(manual, data_dir, config="s64"):
  """Prepares ``image_captions/<config>`` from ``manual`` into ``data_dir``."""
  builder = tfds.builder(f"image_captions/{config}", data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory):
  """A manual directory in layout (a)."""
  manual = tmp_path_factory.mktemp("manual_jsonl")
  write_images(manual / "images")
  write_jsonl(manual, JSONL_LINES)
  return manual


@pytest.fixture(scope="module")
def jsonl_built(jsonl_dir, tmp_path_factory):
  """``image_captions/s64`` built from ``jsonl_dir``."""
  return build(jsonl_dir, tmp_path_factory.mktemp("tfds_ic"))


# --- image_captions: tests -------------------------------------------------------------------------------


def test_preprocess_crops_the_center_and_resizes():
  """Landscape: the black sides are cut and the quadrants land where they were; portrait: upsampled."""
  out = np.asarray(ic.preprocess_image(Image.fromarray(quadrants()), 64))
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  for rows, cols, colour in ((slice(3, 29), slice(3, 29), RED), (slice(3, 29), slice(35, 61), GREEN),
                             (slice(35, 61), slice(3, 29), BLUE), (slice(35, 61), slice(35, 61), WHITE)):
    assert np.abs(out[rows, cols].astype(int) - colour).max() <= 1
  assert out.reshape(-1, 3).max(1).min() > 200  # no black pixel from the cut-off sides
  out = np.asarray(ic.preprocess_image(Image.fromarray(tall()), 64))
  assert out.shape == (64, 64, 3) and np.abs(out[4:60, 4:60].astype(int) - YELLOW).max() <= 1


def test_image_captions_jsonl(jsonl_built, jsonl_dir):
  """Splits, counts, shapes, ids (line numbers), image ids and the stored pixels of the jsonl layout."""
  builder = jsonl_built
  assert builder.builder_config.name == "s64"
  assert builder.info.features["image"].shape == (64, 64, 3)
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {"train": 3, "validation": 2, "test": 1}
  rows = {split: read_all(builder, split) for split in ("train", "validation", "test")}
  assert [int(e["id"]) for e in rows["train"]] == [1, 2, 6]
  assert [int(e["id"]) for e in rows["validation"]] == [3, 7]
  assert [int(e["id"]) for e in rows["test"]] == [5]
  by_id = {int(e["id"]): e for split in rows.values() for e in split}
  for line, spec in enumerate(JSONL_LINES, 1):
    if isinstance(spec, str):
      continue
    ex = by_id[line]
    assert set(ex) == {"image", "caption", "image_id", "id"}
    assert text(ex["image_id"]) == spec["image"]
    assert text(ex["caption"]) == " ".join(spec["caption"].split())
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], ic.load_image(jsonl_dir / "images" / spec["image"], 64))
  assert text(by_id[1]["caption"]) == "four coloured squares"
  np.testing.assert_array_equal(by_id[1]["image"], by_id[7]["image"])
  np.testing.assert_array_equal(by_id[1]["image"], ic.preprocess_image(Image.fromarray(quadrants()), 64))
  assert np.abs(by_id[3]["image"][4:60, 4:60].astype(int) - YELLOW).max() <= 6  # from a JPEG
  gray = by_id[5]["image"]
  assert np.all(gray == 128)
  rgba = by_id[6]["image"].astype(int)  # transparency over white: left white, right blue
  assert np.all(rgba[:, :28] == 255) and np.all(rgba[:, 36:] == BLUE)


def test_image_captions_s224_and_logging(jsonl_dir, tmp_path, caplog):
  """The s224 config stores 224 x 224 JPEGs; the build logs the pairs written per split."""
  with caplog.at_level(logging.INFO, logger="absl"):  # the builders log through absl
    builder = build(jsonl_dir, tmp_path, "s224")
  assert "wrote 3 pairs of 2 images to split train" in caplog.text
  assert "wrote 2 pairs of 2 images to split validation" in caplog.text
  assert "wrote 1 pairs of 1 images to split test" in caplog.text
  ex = next(e for e in read_all(builder, "train") if int(e["id"]) == 1)
  assert ex["image"].shape == (224, 224, 3) and ex["image"].dtype == np.uint8
  assert np.abs(ex["image"][10:100, 10:100].astype(int) - RED).max() <= 8
  assert np.abs(ex["image"][124:214, 124:214].astype(int) - WHITE).max() <= 8


def test_image_captions_coco(tmp_path):
  """The COCO 2017 layout: val -> validation, one example per annotation, image ids as text."""
  manual = tmp_path / "manual"
  for folder in ("annotations", "train2017", "val2017"):
    (manual / folder).mkdir(parents=True)
  Image.fromarray(quadrants()).save(manual / "train2017" / "000000391895.jpg", quality=95)
  Image.fromarray(tall()).save(manual / "train2017" / "000000522418.jpg", quality=95)
  Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(manual / "val2017" / "000000000139.jpg")
  train = {"info": {}, "licenses": [],
           "images": [{"id": 391895, "file_name": "000000391895.jpg", "width": 300, "height": 150},
                      {"id": 522418, "file_name": "000000522418.jpg", "width": 40, "height": 90}],
           "annotations": [{"id": 10, "image_id": 391895, "caption": "A colourful square. "},
                           {"id": 11, "image_id": 522418, "caption": "A yellow band."},
                           {"id": 12, "image_id": 391895, "caption": "Four colours."}]}
  val = {"images": [{"id": 139, "file_name": "000000000139.jpg"}],
         "annotations": [{"id": 20, "image_id": 139, "caption": "grey"}, {"id": 21, "image_id": 139,
                                                                          "caption": "light grey"}]}
  (manual / "annotations" / "captions_train2017.json").write_text(json.dumps(train))
  (manual / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
  builder = build(manual, tmp_path / "tfds")
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "validation": 2}
  train_rows, val_rows = read_all(builder, "train"), read_all(builder, "validation")
  assert [(int(e["id"]), text(e["image_id"]), text(e["caption"])) for e in train_rows] == [
    (10, "391895", "A colourful square."), (11, "522418", "A yellow band."), (12, "391895", "Four colours.")]
  assert [text(e["image_id"]) for e in val_rows] == ["139", "139"]
  assert all(e["image"].shape == (64, 64, 3) for e in train_rows + val_rows)
  assert np.abs(val_rows[0]["image"].astype(int) - 200).max() <= 2
  np.testing.assert_array_equal(train_rows[0]["image"], train_rows[2]["image"])

  (manual / "captions.jsonl").write_text("")  # an (empty) jsonl takes precedence over COCO
  with pytest.raises(ValueError, match=r"captions\.jsonl holds no image-caption pairs"):
    build(manual, tmp_path / "tfds2")
  (manual / "captions.jsonl").unlink()
  val["annotations"].append({"id": 22, "image_id": 140, "caption": "x"})
  (manual / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
  with pytest.raises(ValueError, match=r"captions_val2017\.json: annotation 22 names image_id 140"):
    build(manual, tmp_path / "tfds3")
  val["images"].append({"id": 140, "file_name": "000000000140.jpg"})
  (manual / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
  with pytest.raises(FileNotFoundError, match=r"annotation 22 \(image_id 140\): image .*val2017/000000000140"
                                              r"\.jpg does not exist"):
    build(manual, tmp_path / "tfds4")
  (manual / "annotations" / "captions_val2017.json").write_text('{"images": [],\n "annotations": [}')
  with pytest.raises(ValueError, match=r"captions_val2017\.json: malformed JSON on line 2"):
    build(manual, tmp_path / "tfds5")


def test_image_captions_missing_or_empty_manual_dir(tmp_path):
  """No manual directory, or one with neither layout: the error names the path and what was expected."""
  with pytest.raises(FileNotFoundError, match=r"(?s)manual directory .*nowhere does not exist.*\.jsonl"):
    build(tmp_path / "nowhere", tmp_path / "tfds")
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(FileNotFoundError, match=r"manual directory .*manual is empty"):
    build(manual, tmp_path / "tfds")
  (manual / "readme.txt").write_text("hello")
  (manual / "pics").mkdir()
  with pytest.raises(FileNotFoundError, match=r"neither captions\.jsonl nor annotations/captions_train2017"
                                              r"\.json.*found: pics/, readme\.txt"):
    build(manual, tmp_path / "tfds")


@pytest.mark.parametrize("lines, error, message", [
  ([{"image": "quad.png", "caption": "ok"}, {"image": "missing.png", "caption": "gone"}], FileNotFoundError,
   r"captions\.jsonl:2: image 'missing\.png' not found: .*images/missing\.png does not exist"),
  ([{"image": "images/quad.png", "caption": "ok"}], FileNotFoundError,
   r"captions\.jsonl:1: image 'images/quad\.png' not found.*relative to images/"),
  ([{"image": "quad.png", "caption": "ok"}, "", '{"image": "quad.png", "caption": "broken"'], ValueError,
   r"captions\.jsonl:3: malformed JSON on line 3"),
  ([{"image": "quad.png", "caption": "ok", "split": "val"}], ValueError,
   r"captions\.jsonl:1: unknown split 'val'; expected one of \['train', 'validation', 'test'\]"),
  ([{"image": "quad.png"}], ValueError, r"captions\.jsonl:1: \"caption\" must be a non-empty string"),
  ([{"caption": "no image"}], ValueError, r"captions\.jsonl:1: \"image\" must be a path relative to images/"),
  ([["quad.png", "a list"]], ValueError, r"captions\.jsonl:1: expected a JSON object"),
  ([{"image": "../quad.png", "caption": "escape"}], ValueError, r"captions\.jsonl:1: image '\.\./quad\.png' "
   r"must be a relative path inside"),
  ([{"image": "bad.jpg", "caption": "not an image"}], ValueError,
   r"cannot decode image .*bad\.jpg \(named by .*captions\.jsonl:1\)"),
])
def test_image_captions_jsonl_errors(tmp_path, lines, error, message):
  """Each problem of a captions.jsonl raises an error naming the file, the line and the problem."""
  manual = tmp_path / "manual"
  (manual / "images").mkdir(parents=True)
  Image.fromarray(quadrants()).save(manual / "images" / "quad.png")
  (manual / "images" / "bad.jpg").write_text("this is not a JPEG")
  write_jsonl(manual, lines)
  with pytest.raises(error, match=message):
    build(manual, tmp_path / "tfds")


def test_image_captions_without_images_folder(tmp_path):
  """A captions.jsonl without an images/ folder next to it."""
  manual = tmp_path / "manual"
  manual.mkdir()
  write_jsonl(manual, [{"image": "a.png", "caption": "x"}])
  with pytest.raises(FileNotFoundError, match=r"captions\.jsonl names images relative to .*images/, which "
                                              r"does not exist"):
    build(manual, tmp_path / "tfds")


def test_image_captions_through_the_pipeline(jsonl_built):
  """The pipeline gives float32 [0, 1] images and int32 ids and drops the text features."""
  data_dir = jsonl_built.data_dir.rsplit("/image_captions", 1)[0]
  cfg = data_cfg(data_dir, "image_captions", {})
  src = pipeline.open_split(cfg, "train")
  ex = pipeline.PadAndCast({}, truncate=False)(src[0])
  assert set(ex) == {"_valid", "image", "id"}
  assert ex["image"].dtype == np.float32 and ex["image"].shape == (64, 64, 3)
  assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0 and ex["id"].dtype == np.int32
  batches = list(pipeline.eval_batches(cfg, "validation", global_batch_size=4))
  assert len(batches) == 1 and batches[0]["image"].shape == (4, 64, 64, 3)
  assert batches[0]["_valid"].tolist() == [1, 1, 0, 0]
  example = pipeline.example_from_features(cfg, batch_size=2)
  assert example["image"].shape == (2, 64, 64, 3) and example["image"].dtype == np.float32
