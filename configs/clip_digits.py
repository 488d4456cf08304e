"""CLIP (Radford et al., ICML 2021) / SigLIP (Zhai et al., ICCV 2023) on the embedded digit captions, with
held-out classes for zero-shot transfer (Socher et al., NeurIPS 2013).

``mmjax train --config configs/clip_digits.py --workdir runs/clip_digits`` trains a dual encoder (a ViT-style
patch encoder over the 8x8 images, a text transformer over the captions, both width 64, 2 layers, a shared
64-d space) with the symmetric InfoNCE loss on ``digits_av_captions/all_templates`` (every image with each of
its six captions), keeping only the digits 0-6 (``data.keep_labels``): the captions of 7, 8 and 9 are never
seen in training. At the end the ``zero_shot`` evaluator classifies the test images by their nearest class
prompt ("this is a seven .", ... averaged over the six templates) among the held-out classes 7-9 (chance
1/3) and among all ten (chance 1/10), reports image <-> text Recall@1/5/10 on the test captions, and a
supervised linear probe on the frozen image embeddings (trained with all ten classes' labels) for
comparison.

What held-out zero-shot can and cannot show here: the words "seven", "eight" and "nine" occur in no training
caption, so their token embeddings keep their random initialisation (only weight decay touches them), and
the prompts of the held-out classes reach the shared space through untrained word vectors. Socher et al.
(2013) transfer to unseen classes through word vectors learned from a large text corpus; nothing here
links a held-out digit's name to its shape, so held-out accuracy near chance (1/3) is the expected result,
while the seen classes (0-6, 7-way) and retrieval measure what the contrastive training learned.

Arguments (comma-separated): ``sigmoid`` (SigLIP: the pairwise sigmoid loss with its temperature and bias,
in the chunked ring form on a multi-device mesh), ``runlocal`` (a few steps of a tiny model, no evaluator).
Hyperparameters are sized for this CPU (a few minutes per run), not the papers' (batch 32k, ViTs); the
validation loss includes the held-out classes and is only logged: the last checkpoint is the one evaluated.
"""

from mmjax.config import default_config
from mmjax.data.vocab import Vocabulary

SEEN = "0,1,2,3,4,5,6"
HELD_OUT = "7,8,9"


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = set(parts) - {"sigmoid", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use sigmoid and/or runlocal")
  loss = "sigmoid" if "sigmoid" in parts else "clip"
  c = default_config()
  c.data.name = "digits_av_captions/all_templates"
  c.data.max_lengths = {"caption_tokens": 8}  # longest caption: 8 tokens
  c.data.keep_labels = SEEN
  c.model.name = "clip"
  c.model.kwargs = {"loss": loss, "vocab_size": len(Vocabulary.digits_captions()), "embed_dim": 64,
                    "width": 64, "num_layers": 2, "num_heads": 4, "mlp_ratio": 2, "patch_size": 2,
                    "image_tower": "patches", "text_pool": "last", "dropout": 0.0}
  c.task.name = "contrastive"
  c.task.kwargs = {"loss_type": loss, "chunked": loss == "sigmoid"}
  c.batch_size = 128
  c.eval_batch_size = 128
  c.num_steps = 1000
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500
  c.best_metric = ""  # the validation split holds the held-out classes: no model selection on it
  zero_shot = {"dataset": "digits_av_captions", "split": "test", "held_out": HELD_OUT}
  c.evaluators.zero_shot = {"name": "zero_shot", "every": 0, "kwargs": zero_shot}
  if "runlocal" in parts:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 2, 4, 3
    c.batch_size, c.eval_batch_size = 8, 64
    c.progress = False
    c.model.kwargs.update({"width": 16, "embed_dim": 16, "num_layers": 1, "num_heads": 2})
    c.evaluators = {}
  return c
