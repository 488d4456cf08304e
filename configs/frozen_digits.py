"""Frozen (Tsimpoukelli et al., NeurIPS 2021) on the embedded digits: no download anywhere.

Two stages, two commands (the second reads the first's checkpoint):

1. ``mmjax train --config configs/frozen_digits.py:lm --workdir runs/frozen_digits_lm`` trains a small GPT-2
   (2 layers, width 64) on ``digits_av_text``: captions about a subject word and in-context naming
   episodes (why: see that builder's docstring).
2. ``mmjax train --config configs/frozen_digits.py --workdir runs/frozen_digits`` grafts that LM under
   ``lm`` (``config.init``), freezes it (``optimizer.frozen = "lm/.*"``, an optax mask) and trains only the
   vision encoder to caption ``digits_av_captions`` through a 2-vector visual prefix (n = 2, as the paper).

Then ``mmjax fewshot --config configs/frozen_digits.py --workdir runs/frozen_digits`` scores fast binding
(and real-name classification) with k = 0..5 shots. ``FILE:lm,runlocal`` / ``FILE:runlocal`` shrink the runs
for smoke tests.
"""

from mmjax.config import default_config
from mmjax.data.vocab import Vocabulary

LM = {"vocab_size": len(Vocabulary.digits_captions()), "n_positions": 128, "n_embd": 64, "n_layer": 2,
      "n_head": 4}
LM_WORKDIR = "runs/frozen_digits_lm"


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"lm", "runlocal"}:
    raise ValueError(f"unknown config argument(s) {sorted(set(parts) - {'lm', 'runlocal'})}; use lm and/or "
                     "runlocal")
  c = default_config()
  c.task.name = "next_token"
  c.batch_size = 64
  c.eval_batch_size = 128
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  if "lm" in parts:  # stage 1: the language model
    c.data.name = "digits_av_text"
    c.data.max_lengths = {"tokens": 66}  # longest document: 2 x 5 + 1 lines of 6 tokens
    c.data.test_split = ""
    c.model.name = "causal_lm"
    c.model.kwargs = {**LM, "lm_dropout": 0.1, "bos_id": 2, "text_key": "tokens"}
    c.num_steps = 4000
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 0.01
    c.eval_every = c.checkpoint_every = 1000
  else:  # stage 2: Frozen
    c.data.name = "digits_av_captions"
    c.data.max_lengths = {"caption_tokens": 8}  # longest caption: 8 tokens
    c.model.name = "frozen"
    c.model.kwargs = {**LM, "num_prefix": 2, "vision_widths": (32, 64), "vision_blocks": 1,
                      "image_key": "image", "text_key": "caption_tokens"}
    c.init.workdir = LM_WORKDIR
    c.init.source = c.init.target = "lm"
    c.optimizer.frozen = "lm/.*"
    c.num_steps = 1500
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 500
  if "runlocal" in parts:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 0, 0
    c.batch_size, c.eval_batch_size = 8, 128
    c.progress = False
  return c
