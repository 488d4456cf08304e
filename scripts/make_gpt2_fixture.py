"""Writes ``tests/fixtures/gpt2_tiny/``: a tiny random GPT-2 in the Hugging Face on-disk format plus the
PyTorch model's outputs, for the parity tests of :mod:`mmjax.models.gpt2` (``tests/test_gpt2.py``).

Needs torch, transformers and tokenizers (users never run this; the fixture is in the repository):

    python scripts/make_gpt2_fixture.py [--out tests/fixtures/gpt2_tiny]

Contents: ``config.json`` + ``model.safetensors`` (``save_pretrained``: vocab ~300, 64 positions, width 32,
2 layers, 4 heads; every parameter, LayerNorms and biases included, randomly perturbed so that a wrong
mapping shows), ``vocab.json`` + ``merges.txt`` (a byte-level BPE trained on the sentences below) and
``hf_outputs.npz``:

* ``input_ids [2, 10]``, ``logits [2, 10, V]``: the PyTorch logits of a fixed batch;
* ``prompt_ids [3, P]`` / ``prompt_mask`` (left-padded prompts), ``greedy_ids [3, N]``: each prompt's
  greedy continuation (``generate(do_sample=False)``), run one prompt at a time (no padding), with
  ``eos_token_id`` set and finished rows filled with it; ``max_new_tokens``, ``eos_id``;
* ``tok_text`` / ``tok_ids``: ``GPT2TokenizerFast``'s encoding of a test string.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SENTENCES = [
    "the cat sat on the mat and looked at the small dog",
    "a quick brown fox jumps over the lazy dog",
    "this is a picture of a red car parked in the street",
    "question: what is in the image? answer: a dog playing with a ball",
    "two people are walking along the beach at sunset",
    "the model sees an image and writes a short caption",
]
TOK_TEXT = "Hello world! the cat, the dog<|endoftext|> caf\u00e9 \u2603 123"
PROMPTS = ["the cat sat on", "a dog", "question: what is in the image? answer:"]
MAX_NEW_TOKENS = 12


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="tests/fixtures/gpt2_tiny")
  args = p.parse_args(argv)

  import torch
  from tokenizers import ByteLevelBPETokenizer
  from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  bpe = ByteLevelBPETokenizer(add_prefix_space=False)
  bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"],
                          show_progress=False)
  bpe.save_model(str(out))  # vocab.json, merges.txt
  tok = GPT2TokenizerFast.from_pretrained(str(out), local_files_only=True)  # reads vocab.json + merges.txt
  eos = tok.convert_tokens_to_ids("<|endoftext|>")

  torch.manual_seed(0)
  config = GPT2Config(vocab_size=len(json.loads((out / "vocab.json").read_text())), n_positions=64,
                      n_embd=32, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=eos, initializer_range=0.2)
  model = GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for _, param in model.named_parameters():  # tied lm_head/wte appears once
      param.add_(0.1 * torch.randn_like(param))
  model.save_pretrained(str(out), safe_serialization=True)
  (out / "generation_config.json").unlink(missing_ok=True)  # not read by mmjax

  rng = np.random.default_rng(0)
  input_ids = rng.integers(0, config.vocab_size, (2, 10))
  with torch.no_grad():
    logits = model(torch.tensor(input_ids)).logits.numpy()

  encoded = [tok(t)["input_ids"] for t in PROMPTS]
  plen = max(len(e) for e in encoded)
  prompt_ids = np.full((len(PROMPTS), plen), eos, np.int64)
  prompt_mask = np.zeros((len(PROMPTS), plen), bool)
  greedy = np.full((len(PROMPTS), MAX_NEW_TOKENS), eos, np.int64)
  for i, e in enumerate(encoded):
    prompt_ids[i, plen - len(e):], prompt_mask[i, plen - len(e):] = e, True
    with torch.no_grad():
      gen = model.generate(torch.tensor([e]), attention_mask=torch.ones(1, len(e), dtype=torch.long),
                           do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos,
                           pad_token_id=eos).numpy()[0, len(e):]
    greedy[i, :len(gen)] = gen

  np.savez(out / "hf_outputs.npz", input_ids=input_ids.astype(np.int32), logits=logits.astype(np.float32),
           prompt_ids=prompt_ids.astype(np.int32), prompt_mask=prompt_mask,
           greedy_ids=greedy.astype(np.int32), max_new_tokens=np.int32(MAX_NEW_TOKENS), eos_id=np.int32(eos),
           tok_text=np.array(TOK_TEXT), tok_ids=np.array(tok(TOK_TEXT)["input_ids"], np.int32))
  total = sum(f.stat().st_size for f in out.iterdir())
  print(f"wrote {sorted(f.name for f in out.iterdir())} to {out} ({total / 1024:.0f} KiB); vocab "
        f"{config.vocab_size}, eos {eos}; greedy continuations:\n{greedy}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
