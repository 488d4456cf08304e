"""MAG-BERT (Rahman et al., ACL 2020) on digits_av: a small BERT reads the phrase, and the multimodal
adaptation gate shifts its word embeddings with the speech and the image.

Alignment (not the paper's: digits_av has no word-aligned features). The phrase has up to 20 tokens, the
speech 30-80 log-mel frames of the digit's NAME (not of the phrase), the image one 8x8 observation. The
speech is laid on the phrase uniformly (``alignment = "uniform"``: each word takes the overlap-weighted mean
of the frames in its share of the utterance, as if the two were spoken at one constant rate) and the image
is flattened to one 64-vector given to every word (``static_modalities``). Neither is a real alignment: the
speech says one word, the phrase is a description. The layers after the gate can still gather the
shifted words across the sequence; pooling is the masked mean of the final states (there is no ``[CLS]``
token in the digits vocabulary).

Text model: trained from scratch (no BERT exists for the 82-token digits vocabulary, and a pretrained
English BERT would need the raw phrases re-tokenised, which the dataset does not carry): 2 post-LN layers,
width 64, 4 heads. MAG sits on the embedding output (``injection_layer = 0``, the original MAG-BERT) with
``beta_shift = 1`` (the original driver's default) and dropout 0.1 (the original's 0.5 was chosen for
bert-base on MOSI; 0.1 is the other digits models' rate). Optimiser, schedule and steps: the digits
defaults (``digits_common.base``), as for late fusion.

``FILE:runlocal`` shrinks the run to a few seconds; ``FILE:gpt2`` swaps BERT for a small GPT-2 (causal,
pooled at the last real token).
"""

from digits_common import VOCAB_SIZE, base, shrink, with_robustness

BERT = {"vocab_size": VOCAB_SIZE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 32, "type_vocab_size": 1,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "add_pooling_layer": False}
GPT2 = {"vocab_size": VOCAB_SIZE, "n_positions": 32, "n_embd": 64, "n_layer": 2, "n_head": 4,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1}


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = set(parts) - {"gpt2", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use gpt2 and/or runlocal")
  c = base()
  c.model.name = "mag"
  c.model.kwargs = {"output_dim": 10, "text_model": "bert", "bert": dict(BERT), "injection_layer": 0,
                    "beta_shift": 1.0, "dropout": 0.1, "modalities": ("text", "audio", "image"),
                    "static_modalities": ("image",), "alignment": "uniform", "pool": "mean"}
  if "gpt2" in parts:
    c.model.kwargs.text_model = "gpt2"
    c.model.kwargs.lm = dict(GPT2)
    c.model.kwargs.pool = "last"
  c = with_robustness(c)
  if "runlocal" in parts:
    shrink(c)
    for key, small in (("bert", {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2}),
                       ("lm", {"n_embd": 16, "n_head": 2})):
      if key in c.model.kwargs:
        c.model.kwargs[key].update(small)
  return c
