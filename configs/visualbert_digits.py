"""VisualBERT (Li et al., arXiv 2019) on the embedded digits: task-agnostic pretraining on captions, then
visual question answering. No download anywhere.

Two stages, two commands (the second reads the first's checkpoint):

1. ``mmjax train --config configs/visualbert_digits.py:pretrain --workdir runs/visualbert_digits_pretrain``:
   masked language modelling and image-text matching (task ``pretraining``) on
   ``digits_av_captions/all_templates`` (every image with each of its six captions). ITM negatives take the
   image of another digit (``negative_key = "label"``): another image of the same digit would match its
   caption, since a caption names only the digit.
2. ``mmjax train --config configs/visualbert_digits.py --workdir runs/visualbert_digits`` (default stage):
   the ``qa`` head (the pooled ``[CLS]`` -> MLP -> 12 answers, task ``classification`` on ``answer``) on
   ``digits_av_qa``, starting from the pretrained ``backbone`` (``config.init``; the heads are new);
   ``--config.init.path=DIR`` names another pretraining run.

Arguments (comma-separated): ``pretrain`` (stage 1), ``scratch`` (stage 2 from random parameters, the
comparison that shows what pretraining brings), ``runlocal`` (a few steps, no progress bar). Both stages use
``Vocabulary.digits_vl()`` (the captions' ids unchanged, plus the question words and ``<cls>``, ``<sep>``,
``<mask>``), so the backbone's word embedding fits both. Sizes are for this CPU (width 64, 2 layers), not
the paper's BERT-base. Settings chosen on the validation split (one seed each, 2,000 pretraining and 1,000
QA steps unless said):

* ``init_std = 0.125`` instead of BERT's 0.02: with 0.02, QA from scratch reached 56 % (0.125: 78 %;
  patch 2, dropout 0.1), barely above answering from the question alone (48.5 % on test).
* No dropout (BERT's is 0.1): with 0.1 the matching accuracy stayed at chance (0.49-0.55) for all 2,000
  pretraining steps (patches 2 and 4), and QA from that pretraining was worse than from scratch (78 % vs
  81.5 %, patch 4); without dropout matching reaches 79 % by step 1,000 and 84 % at 2,000, and QA from it
  reached 89.5 % (from scratch: 86.9 %) at step 1,000.
* ``patch_size = 4`` (four 4x4 "regions"): 2x2 patches (16 regions) learned more slowly (without dropout,
  4,000 pretraining steps: matching 82 % vs 84 %; QA from scratch with dropout 0.1: 78 % vs 81.5 %).

Results (3 seeds, results/digits_av/visualbert_*): pretraining ends with 83 % image-text matching and 95 %
masked-token accuracy on test; QA from seed 0's pretraining reaches 86.3 +- 1.0 % test accuracy, from
scratch 86.0 +- 1.1 %: pretraining makes QA learn faster (83-86 % validation accuracy after 250 steps, 72-76 %
from scratch) but, at 1,000 steps, not better.
"""

from mmjax.config import default_config
from mmjax.data.vocab import Vocabulary

PRETRAIN_WORKDIR = "runs/visualbert_digits_pretrain"
ARGS = ("pretrain", "scratch", "runlocal")


def model_kwargs() -> dict:
  """The fields both stages share (the backbone's shape and the vocabulary's ids)."""
  vocab = Vocabulary.digits_vl()
  return {"vocab_size": len(vocab), "cls_id": vocab.id("<cls>"), "sep_id": vocab.id("<sep>"),
          "mask_id": vocab.id("<mask>"), "image_key": "image", "patch_size": 4, "width": 64, "num_layers": 2,
          "num_heads": 4, "mlp_dim": 128, "max_positions": 32, "dropout": 0.0, "attention_dropout": 0.0,
          "init_std": 0.125}  # BERT's 0.02 is for width 768; at width 64 training stalls (model docstring)


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = set(parts) - set(ARGS)
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use pretrain or scratch, and/or "
                     "runlocal")
  if {"pretrain", "scratch"} <= set(parts):
    raise ValueError("pretrain and scratch exclude each other: scratch is the QA stage without pretraining")
  c = default_config()
  c.batch_size = 64
  c.eval_batch_size = 256
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  c.model.name = "visualbert"
  c.model.kwargs = model_kwargs()
  if "pretrain" in parts:
    c.data.name = "digits_av_captions/all_templates"
    c.data.max_lengths = {"caption_tokens": 8}  # longest caption: 8 tokens
    c.task.name = "pretraining"
    c.model.kwargs.update({"head": "pretrain", "text_key": "caption_tokens", "negative_key": "label"})
    c.num_steps = 2000
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 500
  else:
    c.data.name = "digits_av_qa"
    c.data.max_lengths = {"question_tokens": 7}  # longest question: 7 tokens
    c.task.name = "classification"
    c.task.kwargs = {"label_key": "answer"}
    c.model.kwargs.update({"head": "qa", "text_key": "question_tokens", "num_answers": 12})
    c.num_steps = 1000
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 250
    c.best_metric = "validation/loss"  # metrics.json["best"]: the checkpoint with the lowest validation loss
    c.best_mode = "min"
    if "scratch" not in parts:
      c.init.format = "mmjax"
      c.init.path = PRETRAIN_WORKDIR
      c.init.source = c.init.target = "backbone"
  if "runlocal" in parts:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 2, 4, 3
    c.batch_size, c.eval_batch_size = 8, 64
    c.progress = False
    c.best_metric = ""
    c.model.kwargs.update({"width": 16, "num_heads": 2, "mlp_dim": 32, "num_layers": 1})
  return c
