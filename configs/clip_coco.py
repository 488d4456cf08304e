"""CLIP (Radford et al., ICML 2021) or SigLIP (Zhai et al., ICCV 2023) at ViT-B/16 size on your own
image-caption pairs: COCO captions, or ``images/`` + ``captions.jsonl`` (the ``image_captions`` builder).

Argument: ``TOKENIZER_DIR[,sigmoid][,runlocal]``: a local Hugging Face GPT-2 directory (``vocab.json``,
``merges.txt``; only the tokenizer is used) whose byte-level BPE tokenizes the captions. ``sigmoid``
trains SigLIP's loss (the chunked ring on a multi-device mesh); ``runlocal`` a few steps of a tiny model.
The argument ``bench`` stands for "no tokenizer": the config then serves ``mmjax bench train_step
--synthetic`` (random inputs of the data's shapes) and cannot train. Recipe (README, "Dual encoders")::

    mmjax data build image_captions/s224 --manual_dir ~/data/coco      # annotations/ + train2017/ + val2017/
    mmjax train --config configs/clip_coco.py:/models/gpt2 --workdir runs/clip_coco

Sizes as the paper's ViT-B/16 (its Table 20, as we read it): 224 x 224 RGB images in 16 x 16 patches (196
tokens), an image transformer of width 768, 12 layers, 12 heads; a text transformer of width 512, 12
layers, 8 heads over at most 77 tokens; a 512-d shared space. Optimiser as its Table 18: AdamW with
beta2 = 0.98, eps = 1e-6, weight decay 0.2, 2,000 warm-up steps then cosine decay, learning rate 5e-4.
Deviations: the GPT-2 BPE (50,257 tokens) instead of CLIP's lower-cased 49,408-token BPE; the zoo's tower
(sinusoidal positions, mean-pooled patches instead of a class token, a bidirectional text transformer read
at its last token: see :mod:`mmjax.models.clip`); a global batch of 256 (the paper's is 32,768: raise
``batch_size`` with the mesh; the loss always sees the whole global batch); 64k steps instead of 32 epochs
of 400M pairs; no data augmentation (the paper uses random square crops only).
"""

from mmjax.config import default_config

GPT2_VOCAB_SIZE = 50_257  # GPT-2's byte-level BPE, <|endoftext|> (50256) included
BENCH = "bench"


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  flags = {p for p in parts if p in ("sigmoid", "runlocal")}
  dirs = [p for p in parts if p not in flags]
  if len(dirs) != 1:
    raise ValueError("pass the GPT-2 tokenizer directory as the config argument, e.g. "
                     "configs/clip_coco.py:/models/gpt2 (or 'bench' for synthetic benchmarks only)")
  loss = "sigmoid" if "sigmoid" in flags else "clip"
  c = default_config()
  c.data.name = "image_captions/s224"
  c.data.tokenizer = "gpt2:" + ("(none: the 'bench' argument has no tokenizer)" if dirs[0] == BENCH
                                else dirs[0])
  c.data.tokenize_field = "caption"
  c.data.max_lengths = {"caption_tokens": 77}
  c.data.truncate = True  # longer captions are cut to 77 tokens
  c.model.name = "clip"
  c.model.kwargs = {"loss": loss, "vocab_size": GPT2_VOCAB_SIZE, "embed_dim": 512, "image_tower": "patches",
                    "patch_size": 16, "width": 768, "num_layers": 12, "num_heads": 12, "mlp_ratio": 4,
                    "text_width": 512, "text_layers": 12, "text_heads": 8, "text_pool": "last",
                    "dropout": 0.0}
  c.task.name = "contrastive"
  c.task.kwargs = {"loss_type": loss, "chunked": loss == "sigmoid"}
  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-4
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-6
  c.optimizer.weight_decay = 0.2
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 2000
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_steps = 64_000
  c.log_every = 100
  c.eval_every = c.checkpoint_every = 2000
  c.precision = "bfloat16"
  if "runlocal" in flags:
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 3, 1, 0, 0
    c.batch_size, c.eval_batch_size = 4, 4
    c.optimizer.warmup_steps = 1
    c.precision = "float32"
    c.progress = False
    c.model.kwargs.update({"width": 16, "num_layers": 1, "num_heads": 2, "text_width": 16, "text_layers": 1,
                           "text_heads": 2, "embed_dim": 16, "patch_size": 56})
  return c
