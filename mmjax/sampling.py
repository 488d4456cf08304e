"""Decoding and scoring with a causal LM (:class:`mmjax.models.gpt2.GPT2`): the sampler lives apart from
the model, which exposes only a cached forward step (``embed``, ``hidden_states`` with ``cache``/
``cache_index``, ``logits``, ``init_cache``; ``config.n_positions``).

* :func:`generate` — greedy, temperature, top-k and nucleus (top-p, Holtzman et al., 2020) decoding from
  token or embedding prompts (Frozen's visual prefix, Tsimpoukelli et al., 2021), with a KV cache
  (prefill once, then one token per step) or without one (the reference path that recomputes the whole
  buffer each step); one compiled ``lax.while_loop`` per shape.
* :func:`token_log_probs` / :func:`sequence_log_likelihood` — ``log p(answer | prompt)``, how Frozen's
  few-shot evaluation scores candidate answers.
* :func:`filter_logits` — the top-k / top-p mask used by sampling.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from mmjax.models.gpt2 import GPT2


def _unwrap(params):
  """Accepts ``params`` or ``{"params": params}``."""
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return params["params"]
  return params


def filter_logits(logits: jax.Array, top_k=None, top_p=None) -> jax.Array:
  """``logits [..., V]`` with everything outside the top-k and then the nucleus (top-p) set to -inf.

  ``top_k`` (0/None = off) keeps the ``k`` largest logits; ``top_p`` (None or >= 1 = off) then keeps the
  smallest set of most likely tokens whose probability (after top-k) reaches ``p`` (Holtzman et al., 2020),
  at least one token. Ties with the last kept logit are kept. Both may be traced values.
  """
  v = logits.shape[-1]
  top_k = jnp.asarray(0 if top_k is None else top_k, jnp.int32)
  top_p = jnp.asarray(1.0 if top_p is None else top_p, jnp.float32)
  ranked = -jnp.sort(-logits, axis=-1)  # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  in_k = jnp.arange(v) < k
  probs = jax.nn.softmax(jnp.where(in_k, ranked, -jnp.inf), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = in_k & ((mass_before < top_p) | (top_p >= 1.0))
  n_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(ranked, n_keep - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _choose(logits, rng, temperature, top_k, top_p, greedy):
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def _last_real(mask):
  """Index of the last True of each row of ``mask [B, T]`` (``T - 1`` for an all-False row)."""
  t = mask.shape[1]
  return t - 1 - jnp.argmax(mask[:, ::-1], axis=1)


@functools.partial(jax.jit, static_argnames=("model",))
def _embed(model, params, tokens):
  return model.apply({"params": params}, tokens, method="embed")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "use_cache", "greedy", "has_eos",
                                             "return_logits"))
def _generate(model, params, emb, prompt_mask, rng, temperature, top_k, top_p, eos_id, pad_id, *,
              max_new_tokens, use_cache, greedy, has_eos, return_logits):
  variables = {"params": params}
  run = functools.partial(model.apply, variables, train=False, method="hidden_states")
  head = functools.partial(model.apply, variables, method="logits")
  emb = emb.astype(model.dtype)
  b, p, d = emb.shape
  n = max_new_tokens
  rows = jnp.arange(b)
  last = _last_real(prompt_mask)

  if use_cache:
    cache = model.init_cache(b, p + n)
    h, cache = run(embeddings=emb, attention_mask=prompt_mask, cache=cache, cache_index=0)
    state = cache
  else:
    buf = jnp.zeros((b, p + n, d), emb.dtype).at[:, :p].set(emb)
    real = jnp.zeros((b, p + n), bool).at[:, :p].set(prompt_mask)
    h, _ = run(embeddings=buf, attention_mask=real)
    state = (buf, real)
  logits = head(h[rows, last])  # [B, V]

  def choose(i, logits, done):
    tok = _choose(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p, greedy)
    tok = jnp.where(done, pad_id, tok)
    if has_eos:
      done = done | (tok == eos_id)
    return tok, done

  def advance(i, state, tok):
    """Feeds token ``tok [B]`` at slot ``p + i``; returns the new state and next-token logits."""
    if use_cache:
      h, state = run(tok[:, None], cache=state, cache_index=p + i)
      return state, head(h[:, 0])
    buf, real = state
    buf = buf.at[:, p + i].set(model.apply(variables, tok[:, None], method="embed")[:, 0])
    real = real.at[:, p + i].set(True)
    h, _ = run(embeddings=buf, attention_mask=real)
    return (buf, real), head(h[:, p + i])

  out = jnp.full((b, n), pad_id, jnp.int32)  # pad_id traced: [B, N] filled at run time
  step_logits = jnp.zeros((b, n, logits.shape[-1]), jnp.float32) if return_logits else None
  done = jnp.zeros((b,), bool)

  def cond(carry):
    i, _, _, _, done, _ = carry
    return (i < n - 1) & ~jnp.all(done)

  def body(carry):
    i, state, logits, out, done, step_logits = carry
    if return_logits:  # rows that finished earlier record zeros
      step_logits = step_logits.at[:, i].set(jnp.where(done[:, None], 0.0, logits))
    tok, done = choose(i, logits, done)
    out = out.at[:, i].set(tok)
    state, logits = advance(i, state, tok)
    return i + 1, state, logits, out, done, step_logits

  carry = (jnp.int32(0), state, logits, out, done, step_logits)
  i, _, logits, out, done, step_logits = jax.lax.while_loop(cond, body, carry)
  if return_logits:
    step_logits = step_logits.at[:, i].set(jnp.where(done[:, None], 0.0, logits))
  tok, _ = choose(i, logits, done)  # the last token needs no forward pass
  out = out.at[:, i].set(tok)
  return (out, step_logits) if return_logits else out


def generate(model: GPT2, params, prompt, prompt_mask=None, max_new_tokens: int = 16, *, rng=None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             use_cache: bool = True, eos_id: int | None = None, pad_id: int | None = None,
             return_logits: bool = False):
  """Autoregressive decoding from GPT-2: one compiled ``lax.while_loop`` (compiled once per shape, per
  greedy/sampling, ``use_cache``, eos or not and ``return_logits``; other settings are traced).

  Args:
    model: a :class:`~mmjax.models.gpt2.GPT2`.
    params: its parameters (or ``{"params": params}``).
    prompt: ``[B, P]`` int token ids, or ``[B, P, D]`` input embeddings (e.g. a Frozen visual prefix
      followed by :meth:`~mmjax.models.gpt2.GPT2.embed` of text).
    prompt_mask: ``[B, P]`` bool, True for real prompt tokens (default all True). Any padding layout
      works (left padding is usual); every row needs at least one real token.
    max_new_tokens: ``N``, the number of tokens to produce; ``P + N <= n_positions``.
    rng: PRNG key; required when ``temperature > 0``.
    temperature: 0 = greedy (argmax); otherwise sample from ``softmax(logits / temperature)``.
    top_k: sample only among the ``k`` most likely tokens (None/0 = all).
    top_p: nucleus sampling: the smallest set of tokens with probability >= ``p`` (None/1 = all).
    use_cache: True: a :class:`~mmjax.models.gpt2.KVCache` (prefill once, then one token per step).
      False: the reference path that recomputes the whole fixed-size ``P + N`` buffer at every step (same
      results).
    eos_id: after a row produces this token its later tokens are ``pad_id``; decoding stops when every
      row has finished.
    pad_id: filler after ``eos_id`` (default ``eos_id``, else 0).
    return_logits: also return the float32 logits each token was chosen from.

  Returns:
    ``tokens [B, N]`` int32 (the new tokens only), and ``logits [B, N, V]`` when ``return_logits``
    (zeros for steps after a row finished).
  """
  params = _unwrap(params)
  prompt = jnp.asarray(prompt)
  if prompt.ndim not in (2, 3):
    raise ValueError(f"prompt must be token ids [B, P] or embeddings [B, P, D]; got shape {prompt.shape}")
  if prompt.ndim == 2 and not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"a [B, P] prompt must hold int token ids; got {prompt.dtype}")
  b, p = prompt.shape[:2]
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
  if p + max_new_tokens > model.config.n_positions:
    raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds the model's "
                     f"n_positions={model.config.n_positions}")
  greedy = temperature == 0
  if not greedy and temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
  if not greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng=jax.random.PRNGKey(...)")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
  mask = jnp.ones((b, p), bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
  if mask.shape != (b, p):
    raise ValueError(f"prompt_mask must be [B, P] = {(b, p)}; got {mask.shape}")
  pad_id = (eos_id if eos_id is not None else 0) if pad_id is None else pad_id
  rng = jax.random.PRNGKey(0) if rng is None else rng
  # Token prompts are embedded first, so token and embedding prompts share one compiled loop; every
  # sampling setting except greedy/sampled is a traced argument (no recompilation when it changes).
  emb = _embed(model, params, prompt) if prompt.ndim == 2 else prompt
  return _generate(model, params, emb, mask, rng, jnp.float32(temperature or 1.0), jnp.int32(top_k or 0),
                   jnp.float32(1.0 if top_p is None else top_p), jnp.int32(0 if eos_id is None else eos_id),
                   jnp.int32(pad_id), max_new_tokens=int(max_new_tokens), use_cache=bool(use_cache),
                   greedy=greedy, has_eos=eos_id is not None, return_logits=bool(return_logits))


@functools.partial(jax.jit, static_argnames=("model",))
def _token_log_probs(model, params, prefix, prefix_mask, targets, target_mask):
  variables = {"params": params}
  if prefix.ndim == 2:
    prefix = model.apply(variables, prefix, method="embed")
  emb = jnp.concatenate([prefix.astype(model.dtype), model.apply(variables, targets, method="embed")], 1)
  real = jnp.concatenate([prefix_mask, target_mask], axis=1)
  h, _ = model.apply(variables, embeddings=emb, attention_mask=real, train=False, method="hidden_states")
  # Each target is predicted from the last real position before it (any padding layout).
  p, total = prefix.shape[1], emb.shape[1]
  last_upto = jax.lax.cummax(jnp.where(real, jnp.arange(total), -1), axis=1)
  source = jnp.maximum(last_upto[:, p - 1:total - 1], 0)  # [B, T]
  h = jnp.take_along_axis(h, source[..., None], axis=1)
  logp = jax.nn.log_softmax(model.apply(variables, h, method="logits"), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.where(target_mask, picked, 0.0)


def token_log_probs(model: GPT2, params, prefix, targets, *, prefix_mask=None, target_mask=None):
  """``log p(target_t | prefix, earlier targets)`` per target token: ``[B, T]`` float32 (0 where masked).

  ``prefix``: ``[B, P]`` int tokens or ``[B, P, D]`` embeddings (Frozen: visual prefix + prompt text),
  with at least one real token per row; ``targets [B, T]`` int (e.g. a candidate answer).
  ``prefix_mask [B, P]`` / ``target_mask [B, T]`` bool mark real tokens (default all True); any padding
  layout works. One uncached forward pass (compiled once per shape).
  """
  params = _unwrap(params)
  prefix, targets = jnp.asarray(prefix), jnp.asarray(targets)
  if prefix.ndim not in (2, 3) or targets.ndim != 2 or prefix.shape[0] != targets.shape[0]:
    raise ValueError(f"expected prefix [B, P] or [B, P, D] and targets [B, T]; got {prefix.shape}, "
                     f"{targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer) or (prefix.ndim == 2 and not jnp.issubdtype(
      prefix.dtype, jnp.integer)):
    raise ValueError(f"targets (and a [B, P] prefix) must be int token ids; got {targets.dtype}, "
                     f"{prefix.dtype}")
  b, p, t = prefix.shape[0], prefix.shape[1], targets.shape[1]
  pm = jnp.ones((b, p), bool) if prefix_mask is None else jnp.asarray(prefix_mask, bool)
  tm = jnp.ones((b, t), bool) if target_mask is None else jnp.asarray(target_mask, bool)
  if pm.shape != (b, p) or tm.shape != (b, t):
    raise ValueError(f"masks must match prefix [B, P] = {(b, p)} and targets [B, T] = {(b, t)}; got "
                     f"{pm.shape}, {tm.shape}")
  if p + t > model.config.n_positions:
    raise ValueError(f"prefix {p} + targets {t} tokens exceed n_positions={model.config.n_positions}")
  return _token_log_probs(model, params, prefix, pm, targets, tm)


def sequence_log_likelihood(model: GPT2, params, prefix, targets, *, prefix_mask=None, target_mask=None):
  """``sum_t log p(target_t | prefix, target_<t)`` over real target tokens: ``[B]`` float32.

  Scores candidate answers given a prompt, as Frozen's few-shot evaluation does (Tsimpoukelli et al.,
  2021); arguments as in :func:`token_log_probs`.
  """
  return token_log_probs(model, params, prefix, targets, prefix_mask=prefix_mask,
                         target_mask=target_mask).sum(axis=-1)
