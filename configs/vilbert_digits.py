"""ViLBERT (Lu et al., NeurIPS 2019) / LXMERT (Tan and Bansal, EMNLP 2019) on the embedded digits: two-stage
pretraining then visual question answering, no download anywhere.

1. ``mmjax train --config configs/vilbert_digits.py:pretrain --workdir runs/vilbert_digits_pretrain``
   pretrains the two-stream model (text stream over ``[CLS] caption [SEP]``, image stream over the 16 2x2
   patches of the 8x8 image plus an ``<IMG>`` token, co-attention fusion) on
   ``digits_av_captions/all_templates`` with the ``pretraining`` task: masked language modelling,
   image-text matching (half the images replaced by another example's; a replacement showing the same
   digit counts as a match, ``itm_match_key = "label"``, since the captions say nothing but the digit)
   and masked region feature regression.
2. ``mmjax train --config configs/vilbert_digits.py --workdir runs/vilbert_digits`` fine-tunes it on
   ``digits_av_qa`` (five questions per image, 12 answers) with the ``classification`` task, starting from
   the pretraining run's ``backbone`` (``init.path``; override it to start from another run, or set
   ``--config.init.format= --config.init.path=`` to train from scratch).

Arguments (comma-separated): ``pretrain`` (stage 1), ``lxmert`` (LXMERT's cross-modality encoder instead of
ViLBERT's co-attention; its pretraining run is ``runs/lxmert_digits_pretrain``), ``runlocal`` (a few steps
of a tiny model). The vocabulary is ``Vocabulary.digits_vl()`` (the captions' ids plus the question words
and ``<cls>``, ``<sep>``, ``<mask>``) in both stages, so the grafted word embeddings fit. Sizes are for this
CPU (1-2 minutes per stage), not the papers' (BERT-base streams, 3.1M Conceptual Captions pairs).

Measured (3 seeds each, results/digits_av/{vilbert,lxmert}_{pretrain,qa}; QA from seed 0's pretraining run):
pretraining learns the caption templates (MLM accuracy ~0.835, what the templates allow without reading the
image) but not image-text matching (ITM accuracy 0.545 = always "match") with either fusion. QA test accuracy
(the question-only baseline is 48.5 %): ViLBERT 51.1 +- 3.8 % from pretraining, 56.2 +- 13.5 % from scratch
(``*_qa_scratch``); LXMERT 72.0 +- 5.2 % from pretraining, 60.0 +- 7.3 % from scratch. Whether a seed leaves
the question-only answers within 1,500 steps varies (per-seed results in the summaries).
"""

from mmjax.config import default_config
from mmjax.data.vocab import Vocabulary

PRETRAIN_WORKDIR = {"coattention": "runs/vilbert_digits_pretrain", "lxmert": "runs/lxmert_digits_pretrain"}
ARGS = ("pretrain", "lxmert", "runlocal")


def model_kwargs(fusion: str) -> dict:
  """The shared shape of both stages (the backbone must match for the graft). No dropout (the papers: 0.1):
  with 0.1 the image stream of this small model barely learned the digits (measured: a digit probe through
  the QA head reached 25 % training accuracy after 300 steps with hidden dropout 0.1, 66 % without)."""
  vocab = Vocabulary.digits_vl()
  return {"fusion": fusion, "vocab_size": len(vocab), "cls_id": vocab.id("<cls>"),
          "sep_id": vocab.id("<sep>"), "mask_id": vocab.id("<mask>"), "image_key": "image", "patch_size": 4,
          "width": 64, "num_heads": 4, "intermediate_size": 128, "num_text_layers": 1, "num_image_layers": 1,
          "num_fusion_layers": 2, "max_text_length": 16, "dropout": 0.0, "attention_dropout": 0.0,
          "init_std": 0.125}


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - set(ARGS):
    raise ValueError(f"unknown config argument(s) {sorted(set(parts) - set(ARGS))}; use any of {list(ARGS)}")
  fusion = "lxmert" if "lxmert" in parts else "coattention"
  c = default_config()
  c.model.name = "vilbert"
  c.model.kwargs = model_kwargs(fusion)
  c.batch_size = 64
  c.eval_batch_size = 256
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  if "pretrain" in parts:  # stage 1
    c.data.name = "digits_av_captions/all_templates"
    c.data.max_lengths = {"caption_tokens": 8}  # longest caption: 8 tokens
    c.task.name = "pretraining"
    c.model.kwargs.update({"head": "pretrain", "text_key": "caption_tokens", "itm_match_key": "label"})
    c.num_steps = 3000  # matching leaves "always match" only after ~1,000-1,500 steps
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 500
    c.best_metric = ""  # the last checkpoint is the one fine-tuned
  else:  # stage 2: VQA-style answer classification
    c.data.name = "digits_av_qa"
    c.data.max_lengths = {"question_tokens": 7}  # longest question: 7 tokens
    c.task.name = "classification"
    c.task.kwargs = {"label_key": "answer"}
    c.model.kwargs.update({"head": "qa", "text_key": "question_tokens", "num_answers": 12})
    c.init.format = "mmjax"
    c.init.path = PRETRAIN_WORKDIR[fusion]
    c.init.source = c.init.target = "backbone"
    c.num_steps = 1500
    c.optimizer.lr = 1e-3
    c.eval_every = c.checkpoint_every = 500
    c.best_metric = "validation/accuracy"
  if "runlocal" in parts:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 2, 4, 3
    c.batch_size, c.eval_batch_size = 8, 64
    c.progress = False
    c.best_metric = ""
    c.init.format = c.init.path = ""  # tiny model: nothing to graft
    c.model.kwargs.update({"width": 16, "num_heads": 2, "intermediate_size": 32, "num_fusion_layers": 1})
  return c
