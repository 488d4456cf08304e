"""Frozen (Tsimpoukelli et al., NeurIPS 2021) on the embedded digits: no download anywhere.

Two stages, two commands (the second reads the first's checkpoint):

1. ``mmjax train --config configs/frozen_digits.py:lm --workdir runs/frozen_digits_lm`` trains a small GPT-2
   (2 layers, width 64) on ``digits_av_text``: captions about a subject, in-context naming and binding
   episodes and repeated word sequences (why: see that builder's docstring).
2. ``mmjax train --config configs/frozen_digits.py --workdir runs/frozen_digits`` grafts that LM under
   ``lm`` (``config.init``), freezes it (``optimizer.frozen = "lm/.*"``, an optax mask) and trains only the
   vision encoder to caption ``digits_av_captions/all_templates`` (each image with each of its captions)
   through a 2-vector visual prefix (n = 2, as the paper), after the ``<bos>`` the LM was pretrained with.

Both stages end with ``fewshot`` evaluators (the LM alone on text stand-ins; Frozen with images, also with
snapped prefixes and with text support lines), whose accuracies land in ``metrics.json``. Any checkpoint
can be scored again with ``mmjax fewshot --config configs/frozen_digits.py --workdir runs/frozen_digits``:
fast binding (and real-name classification) with k = 0..5 shots (``--snap_prefix``: with the prefixes
snapped to the nearest token embeddings). ``FILE:lm,runlocal`` / ``FILE:runlocal`` shrink the runs for
smoke tests (without the evaluators); ``FILE:vocab`` trains the encoder with the ``vocab_mixture`` prefix
head (not the paper's; README: Frozen).
"""

from mmjax.config import default_config
from mmjax.data.builders.digits_av_captions import BOS_ID
from mmjax.data.builders.digits_av_text import MAX_TOKENS, SUBJECT_REPEATS
from mmjax.data.vocab import Vocabulary

# The language model's GPT2Config fields (model.kwargs.lm of both stages; the rest keep GPT-2's defaults).
LM = {"vocab_size": len(Vocabulary.digits_captions()), "n_positions": 128, "n_embd": 64, "n_layer": 2,
      "n_head": 4}
LM_WORKDIR = "runs/frozen_digits_lm"


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"lm", "vocab", "runlocal"}:
    raise ValueError(f"unknown config argument(s) {sorted(set(parts) - {'lm', 'vocab', 'runlocal'})}; use lm "
                     "or vocab, and/or runlocal")
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
    c.data.max_lengths = {"tokens": MAX_TOKENS}  # longest document: a 5 + 5 shot episode and its query
    c.data.test_split = ""
    c.model.name = "causal_lm"
    # No dropout: in-context copying forms later with it, and 50,000 generated documents do not overfit.
    c.model.kwargs = {"lm": {**LM, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0},
                      "bos_id": BOS_ID, "text_key": "tokens"}
    # Binding appears abruptly (measured: between steps 4,000 and 6,000 at batch 64; with batch 32 it had
    # not appeared after 16,000 steps in one run, and appeared by 10,000 in another).
    c.batch_size = 64
    c.num_steps = 10_000
    c.optimizer.schedule = "constant"  # after the warm-up
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.01
    c.eval_every = c.checkpoint_every = 2000
    # At the end: few-shot on text-only episodes (each image replaced by its digit word twice), the LM alone.
    c.evaluators.fewshot = {"name": "fewshot", "every": 0, "kwargs": {"episodes": 200}}
  else:  # stage 2: Frozen
    # every image with each of its six captions: with one fixed caption per image the encoder can memorise
    # the caption's template instead of reading the digit (see the builder's docstring)
    c.data.name = "digits_av_captions/all_templates"
    c.data.max_lengths = {"caption_tokens": 8}  # longest caption: 8 tokens
    c.model.name = "frozen"
    c.model.kwargs = {"lm": LM, "num_prefix": SUBJECT_REPEATS, "vision_widths": (32, 64), "vision_blocks": 1,
                      "bos_id": BOS_ID, "image_key": "image", "text_key": "caption_tokens"}  # LM: no dropout
    c.init.format = "mmjax"
    c.init.path = LM_WORKDIR
    c.init.source = c.init.target = "lm"
    c.optimizer.frozen = "lm/.*"
    c.num_steps = 1500
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 500
    if "vocab" in parts:  # not the paper's: prefixes are mixtures of token embeddings (see VisionEncoder)
      c.model.kwargs.prefix_head = "vocab_mixture"
    # At the end: 2-way few-shot (k = 0..5, 200 episodes each), and the two diagnostics of the README:
    # prefixes snapped to their nearest token embeddings, and support examples given as text.
    c.evaluators.fewshot = {"name": "fewshot", "every": 0, "kwargs": {"episodes": 200}}
    c.evaluators.fewshot_snapped = {"name": "fewshot", "every": 0,
                                    "kwargs": {"episodes": 200, "snap_prefix": True}}
    text_support = {"episodes": 200, "text_support": True, "open_ended": False,
                    "protocols": ("fast_binding",)}
    c.evaluators.fewshot_text_support = {"name": "fewshot", "every": 0, "kwargs": text_support}
  if "runlocal" in parts:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 0, 0
    c.batch_size, c.eval_batch_size = 8, 128
    c.progress = False
    c.evaluators = {}
  return c
