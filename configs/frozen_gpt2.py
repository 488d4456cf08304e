"""Frozen (Tsimpoukelli et al., NeurIPS 2021) with a real GPT-2 and your own image-caption pairs.

Argument: a LOCAL Hugging Face GPT-2 directory (``config.json``, ``model.safetensors``, ``vocab.json``,
``merges.txt``; e.g. a snapshot of "gpt2" you downloaded yourself): ``configs/frozen_gpt2.py:/models/gpt2``.
The language model's size is read from its ``config.json`` (a ``GPT2Config``, without dropout, in
``model.kwargs.lm``); its weights are grafted under ``lm`` (``config.init.format = "hf_gpt2"``) and frozen
(``optimizer.frozen``); captions are tokenized with its BPE and end with ``<|endoftext|>``. Data:
``image_captions`` (64x64 RGB) built from a manual directory in the ``images/ + captions.jsonl`` or
COCO-captions layout: ``mmjax data build image_captions --manual_dir DIR``.

As in the paper: n = 2 prefix vectors, loss on the caption tokens only, Adam. Deviations: a small
GroupNorm ResNet on 64x64 images instead of NF-ResNet-50 at 224 (``model.kwargs.vision_*`` and
``data.name=image_captions/s224`` scale it up), GPT-2 instead of the paper's 7B LM, and the learning rate
(3e-4) and step count are our choices. ``FILE:DIR,runlocal`` runs a few steps.
"""

import dataclasses
import json
from pathlib import Path

from mmjax.config import default_config


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  runlocal = "runlocal" in parts
  dirs = [p for p in parts if p != "runlocal"]
  if len(dirs) != 1:
    raise ValueError("pass the GPT-2 directory as the config argument: configs/frozen_gpt2.py:/path/to/gpt2")
  hf_dir = dirs[0]
  config_file = Path(hf_dir) / "config.json"
  if not config_file.is_file():
    raise ValueError(f"{config_file} does not exist: pass a local Hugging Face GPT-2 directory")
  from mmjax.models.convert.hf_gpt2 import config_from_hf

  lm = config_from_hf(json.loads(config_file.read_text()), source=str(config_file)).no_dropout()  # frozen
  c = default_config()
  c.data.name = "image_captions"
  c.data.tokenizer = f"gpt2:{hf_dir}"
  c.data.tokenize_field = "caption"
  c.data.max_lengths = {"caption_tokens": 40}
  c.data.truncate = True  # longer captions are cut (their end token too)
  c.model.name = "frozen"
  c.model.kwargs = {"lm": dataclasses.asdict(lm), "num_prefix": 2, "vision_widths": (64, 128, 256),
                    "vision_blocks": 2, "image_key": "image", "text_key": "caption_tokens"}
  c.init.format = "hf_gpt2"
  c.init.path = hf_dir
  c.init.target = "lm"
  c.optimizer.frozen = "lm/.*"
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-4
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 500
  c.optimizer.clip_norm = 1.0
  c.task.name = "next_token"
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 20_000
  c.log_every = 100
  c.eval_every = c.checkpoint_every = 2000
  if runlocal:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 3, 1, 0, 0
    c.batch_size, c.eval_batch_size = 4, 4
    c.model.kwargs.vision_widths = (8, 8)
    c.model.kwargs.vision_blocks = 1
    c.progress = False
  return c
