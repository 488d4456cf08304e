"""Importers of foreign weights, one module per source format; each registers a loader
(:func:`mmjax.models.registry.register_loader`) that ``config.init.format`` names.

* :mod:`~mmjax.models.convert.hf_gpt2` — Hugging Face GPT-2 directories (``config.json`` +
  safetensors) -> :class:`~mmjax.models.gpt2.GPT2` (loader ``hf_gpt2``).
* :mod:`~mmjax.models.convert.hf_bert` — Hugging Face BERT directories (``config.json`` + safetensors)
  -> :class:`~mmjax.models.bert.BertModel` (loader ``hf_bert``; MAG-BERT's text model).
* :mod:`~mmjax.models.convert.mult_torch` — original PyTorch MulT state dicts (``.pt`` or ``.npz``) ->
  :class:`~mmjax.models.mult.MulT` (loader ``mult_torch``).
"""
