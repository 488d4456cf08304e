"""Can a vision-language model learn image-text matching when matching is trivial? A synthetic probe.

Each example is an 8x8 image that is black except for one 2x2 bright square whose place encodes a digit
(0-9), and a 4-token caption whose second token names the digit. The model trains with its own
``head="pretrain"`` image-text matching only (``mlm_weight = region_weight = 0``), on fresh batches every
step, with the same negatives as on the digits (another example's image, a match when it shows the same
digit). Matching needs only "does the caption's digit equal the square's digit"; a model that cannot
learn it here cannot learn it on the real digits either.

    python scripts/matching_probe.py --out results/probes/matching.json

writes the training matching loss and accuracy every ``--every`` steps for each probed setting (the settings
are in ``SETTINGS``; ``--only NAME`` runs one). Committed, each from ``--only`` and ``--seeds 0,1,2``:
``results/probes/matching.json`` (the six settings with the papers' 5-d region boxes),
``matching_region_index.json`` (``lxmert_index_init0.02``, ``lxmert_index_init0.125``,
``vilbert_index_init0.125``), ``matching_pool.json`` (the two ``*pool*`` settings) and ``matching_lr.json``
(``vilbert_index_init0.125_lr3e-4``). Run it with the checkout first on the path (``PYTHONPATH=.``), or Python
imports whichever ``mmjax`` is installed. Accuracy is over one fresh batch of 64, so a model that always
answers "match" scores the batch's share of matched pairs (about 55 %).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

from mmjax import models, tasks

VOCAB = {"vocab_size": 40, "cls_id": 2, "sep_id": 3, "mask_id": 4}
SMALL = {"width": 32, "num_heads": 2, "dropout": 0.0, "attention_dropout": 0.0, "head": "pretrain"}
TWO_STREAM = {**VOCAB, **SMALL, "intermediate_size": 64, "num_text_layers": 1, "num_image_layers": 1,
              "num_fusion_layers": 2, "max_text_length": 16, "mlm_weight": 0.0, "region_weight": 0.0,
              "itm_match_key": "label"}
# name -> (registered model, kwargs, steps[, Adam's learning rate; default 1e-3])
SETTINGS = {
    "visualbert_init0.02": ("visualbert", {**VOCAB, **SMALL, "num_layers": 2, "mlp_dim": 64,
                                           "max_positions": 32, "mlm_weight": 0.0, "negative_key": "label",
                                           "init_std": 0.02}, 3000),
    "visualbert_init0.125": ("visualbert", {**VOCAB, **SMALL, "num_layers": 2, "mlp_dim": 64,
                                            "max_positions": 32, "mlm_weight": 0.0, "negative_key": "label",
                                            "init_std": 0.125}, 3000),
    "vilbert_init0.02": ("vilbert", {**TWO_STREAM, "fusion": "coattention", "init_std": 0.02}, 3000),
    "vilbert_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "coattention", "init_std": 0.125}, 3000),
    "lxmert_init0.02": ("vilbert", {**TWO_STREAM, "fusion": "lxmert", "init_std": 0.02}, 3000),
    "lxmert_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "lxmert", "init_std": 0.125}, 3000),
    # a learned embedding per region (VisualBERT's kind of visual position) instead of the 5-d box: the
    # digit here is only the square's place, and the box's linear code is what the streams fail on
    "vilbert_index_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "coattention", "init_std": 0.125,
                                            "region_location": "index"}, 3000),
    "lxmert_index_init0.02": ("vilbert", {**TWO_STREAM, "fusion": "lxmert", "init_std": 0.02,
                                          "region_location": "index"}, 3000),
    "lxmert_index_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "lxmert", "init_std": 0.125,
                                           "region_location": "index"}, 3000),
    # the setting above that learns, with ViLBERT's pooling (the product of both streams' first tokens)
    # instead of LXMERT's (the text stream's [CLS]); and ViLBERT with LXMERT's pooling
    "lxmert_index_mulpool_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "lxmert", "init_std": 0.125,
                                                   "region_location": "index", "pool": "mul"}, 3000),
    "vilbert_index_textpool_init0.125": ("vilbert", {**TWO_STREAM, "fusion": "coattention", "init_std": 0.125,
                                                     "region_location": "index", "pool": "text"}, 3000),
    # ViLBERT's failing index setting with a lower learning rate: its fusion layer has four post-LN
    # sub-layers (co-attention, FFN, self-attention, FFN) to LXMERT's three
    "vilbert_index_init0.125_lr3e-4": ("vilbert", {**TWO_STREAM, "fusion": "coattention", "init_std": 0.125,
                                                   "region_location": "index"}, 3000, 3e-4),
}


def synthetic_batch(rng: np.random.Generator, n: int = 64) -> dict:
  """Images with the digit's square, captions ``[5, 10 + digit, 5, 5]``, and the digit as ``label``."""
  digits = rng.integers(0, 10, n)
  images = np.zeros((n, 8, 8), np.float32)
  for i, d in enumerate(digits):
    row, col = 2 * (d // 4), 2 * (d % 4)
    images[i, row:row + 2, col:col + 2] = 1.0
  tokens = np.full((n, 4), 5, np.int32)
  tokens[:, 1] = 10 + digits
  return {"image": images, "caption_tokens": tokens, "caption_tokens_mask": np.ones((n, 4), bool),
          "label": digits.astype(np.int32)}


def probe(model_name: str, kwargs: dict, steps: int, every: int, seed: int = 0,
          lr: float = 1e-3) -> list[dict]:
  """Trains matching only, with Adam (``lr``, constant); returns ``[{step, itm, itm_accuracy}]`` every
  ``every`` steps."""
  model, task = models.build(model_name, kwargs), tasks.get("pretraining")
  rng = np.random.default_rng(seed)
  params = jax.jit(lambda b: model.init(jax.random.PRNGKey(seed), b, train=False)["params"])(
      synthetic_batch(rng))
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    def loss_fn(p):
      outputs, aux = model.apply({"params": p}, batch, train=True, rngs={"latent": key, "dropout": key})
      return task.loss(outputs, aux, batch)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  history = []
  for i in range(1, steps + 1):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    params, opt_state, metrics = step(params, opt_state, synthetic_batch(rng), key)
    if i % every == 0:
      history.append({"step": i, "itm": float(metrics["itm"]),
                      "itm_accuracy": float(metrics["itm_accuracy"])})
      print(f"matching_probe: {model_name} {kwargs.get('fusion', '')} seed {seed} step {i}: matching loss "
            f"{history[-1]['itm']:.4f}, accuracy {history[-1]['itm_accuracy']:.3f}", flush=True)
  return history


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
  parser.add_argument("--only", choices=sorted(SETTINGS), action="append", help="run only these settings")
  parser.add_argument("--every", type=int, default=250, help="record every N steps")
  parser.add_argument("--steps", type=int, default=0, help="override every setting's number of steps")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds (parameters, data and negatives)")
  args = parser.parse_args(argv)
  results = {}
  for name in args.only or SETTINGS:
    model_name, kwargs, steps, *rest = SETTINGS[name]
    lr = rest[0] if rest else 1e-3
    steps = args.steps or steps
    results[name] = {"model": model_name, "kwargs": kwargs, "steps": steps, "lr": lr, "seeds": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
      start = time.perf_counter()
      history = probe(model_name, kwargs, steps, args.every, seed, lr)
      seconds = round(time.perf_counter() - start, 1)
      results[name]["seeds"][str(seed)] = {"history": history, "seconds": seconds}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps({"what": __doc__.splitlines()[0], "machine": platform.processor() or
                                  platform.machine(), "jax": jax.__version__, "results": results}, indent=1)
                      + "\n")
  print(f"matching_probe: wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
