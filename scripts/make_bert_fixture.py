"""Writes ``tests/fixtures/bert_tiny/``: a tiny random BERT in the Hugging Face on-disk format plus the
PyTorch model's outputs, for the parity test of :mod:`mmjax.models.bert` (``tests/test_mag.py``).

Needs torch and transformers (users never run this; the fixture is in the repository):

    python scripts/make_bert_fixture.py [--out tests/fixtures/bert_tiny]

Contents: ``config.json`` + ``model.safetensors`` (``BertModel.save_pretrained``: vocab 96, 24 positions,
width 16, 2 layers, 2 heads, MLP 32, pooler; every parameter, LayerNorms and biases included, randomly
perturbed so that a wrong mapping shows) and ``hf_outputs.npz``: ``input_ids [2, 9]``, ``token_type_ids``,
``attention_mask`` (the second row padded at the end), ``hidden_states [L + 1, 2, 9, 16]`` (the embedding
output and each layer's) and ``pooler_output [2, 16]`` of the model in eval mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="tests/fixtures/bert_tiny")
  args = p.parse_args(argv)

  import torch
  from transformers import BertConfig, BertModel

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  config = BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=24, type_vocab_size=2,
                      hidden_act="gelu", layer_norm_eps=1e-12)
  model = BertModel(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))  # LayerNorms and biases away from 1 / 0
  model.save_pretrained(str(out), safe_serialization=True)

  rng = np.random.default_rng(0)
  input_ids = rng.integers(1, config.vocab_size, size=(2, 9)).astype(np.int64)
  token_type_ids = np.zeros_like(input_ids)
  token_type_ids[:, 5:] = 1
  attention_mask = np.ones_like(input_ids)
  attention_mask[1, 6:] = 0
  with torch.no_grad():
    res = model(input_ids=torch.tensor(input_ids), token_type_ids=torch.tensor(token_type_ids),
                attention_mask=torch.tensor(attention_mask), output_hidden_states=True)
  np.savez(out / "hf_outputs.npz", input_ids=input_ids.astype(np.int32),
           token_type_ids=token_type_ids.astype(np.int32), attention_mask=attention_mask.astype(bool),
           hidden_states=np.stack([h.numpy() for h in res.hidden_states]).astype(np.float32),
           pooler_output=res.pooler_output.numpy().astype(np.float32))
  print(f"wrote {out}: {sorted(f.name for f in out.iterdir())}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
