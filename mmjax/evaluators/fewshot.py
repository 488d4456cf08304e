"""``fewshot``: few-shot evaluation of Frozen with interleaved image/text prompts (Tsimpoukelli et al.,
2021, sec. 4), as an evaluator (at the end of training or every N steps) and behind ``mmjax fewshot``.

Each episode is one interleaved sequence: ``k`` support examples per class, each an image followed by its
caption, then the query image and the prompt; every candidate answer is scored by its log-likelihood
under the language model after the prompt, and the most likely one is the prediction (the paper scores
answers the same way for its closed-set tasks).

Protocols (``k`` = 0..5 shots per class):

* ``fast_binding`` (sec. 4.3, "fast concept binding"): two classes drawn per episode get *new names* from a
  list of nonsense words ("dax", "blicket", ...), bound to the images only inside the prompt
  (``[img] this is a dax . [img] this is a blicket . ... [query] this is a`` -> "dax" or "blicket").
  Chance is 1/2; with ``k = 0`` the names carry no information, so accuracy above chance must come from
  binding within the prompt.
* ``classification``: ``ways`` classes per episode with their *real* names (the support captions are
  ``this is a seven .``); the answer is one of the ``ways`` names.

With ``text_repeats = n`` the episodes are text only: each image is replaced by its class's real name
repeated ``n`` times (``seven seven this is a dax . ...``), the stand-in that ``digits_av_text`` pretrains
the language model with. Scored on the language model alone (a ``causal_lm`` checkpoint), this measures
what the LM brings before any image is involved.

Two diagnostics for Frozen (README: Frozen): ``text_support`` (``mmjax fewshot --text_support``) makes
only the support examples text and keeps the query an image; ``snap_prefix`` (``--snap_prefix``; not in
the paper) replaces the prefix vectors by their nearest token embeddings, so each image reaches the LM as
``num_prefix`` words. Both separate what the LM can bind from how well it reads continuous prefixes.

Both are also scored *open-ended* (the paper's open-ended miniImageNet / VQA setting): the LM decodes
greedily after the prompt with no candidate list, and the episode counts when its answer comes out.

Sequences are packed on the host (:func:`pack`): positions hold tokens or image-prefix vectors, right
padded, so a batch of episodes runs through :meth:`mmjax.models.frozen.Frozen.interleaved` in one call.

Evaluator kwargs (metrics ``PROTOCOL/k`` and ``PROTOCOL_open_ended/k``; the whole result also goes to
``<workdir>/fewshot/NAME-stepN.json``): ``protocols``, ``shots``, ``episodes``, ``ways``, ``split``,
``seed``, ``open_ended``, ``text_repeats``, ``snap_prefix``, ``text_support`` (as :func:`fewshot_scores`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import pipeline
from mmjax.errors import ConfigError
from mmjax.evaluators.registry import Result, register
from mmjax.files import write_json
from mmjax.models.gpt2 import GPT2
from mmjax.sampling import generate


def pack(sequences: Sequence[Sequence], num_prefix: int, length: int | None = None):
  """Packs interleaved sequences into ``(tokens, slots, kinds)`` int32 arrays ``[B, L]``.

  Each sequence is a list of token ids (int) and images (``("image", j)``: the sequence's ``j``-th image,
  taking ``num_prefix`` positions). ``kinds``: 0 padding, 1 token, 2 image prefix (``slots``: which of the
  ``S * num_prefix`` prefix vectors). ``length`` defaults to the longest sequence.
  """
  def size(seq):
    return sum(num_prefix if isinstance(x, tuple) else 1 for x in seq)

  longest = max(size(s) for s in sequences)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"a sequence needs {longest} positions; length is {length}")
  tokens, slots, kinds = (np.zeros((len(sequences), length), np.int32) for _ in range(3))
  for b, seq in enumerate(sequences):
    pos = 0
    for item in seq:
      if isinstance(item, tuple):
        kind, j = item
        if kind != "image":
          raise ValueError(f"unknown sequence item {item!r}; use token ids or ('image', j)")
        for p in range(num_prefix):
          kinds[b, pos], slots[b, pos] = 2, j * num_prefix + p
          pos += 1
      else:
        kinds[b, pos], tokens[b, pos] = 1, int(item)
        pos += 1
  return tokens, slots, kinds


def answer_log_likelihood(model, params, images, tokens, slots, kinds, answer_mask):
  """``[B]`` summed log-probabilities of the tokens where ``answer_mask`` is True, each given everything
  before it (``answer_mask`` marks the answer's positions in the packed sequence)."""
  logits = model.apply({"params": params}, images, tokens, slots, kinds, method="interleaved")
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(answer_mask[:, 1:], picked, 0.0), axis=1)


@dataclasses.dataclass
class Episode:
  """One prompt: its images ``[S, ...]``, the sequence without the answer, the candidate answers (token
  lists) and the index of the correct one."""

  images: np.ndarray
  prompt: list
  answers: list[list[int]]
  correct: int


@dataclasses.dataclass
class FewShot:
  """Few-shot episodes over a labelled image split, and their evaluation.

  ``encode`` turns text into token ids; ``class_names[c]`` is class ``c``'s real name;
  ``nonsense_words`` name classes in ``fast_binding``; ``prompt`` precedes the answer, ``suffix`` follows
  it in support captions and answers (``"this is a" + " seven" + " ."``).
  """

  encode: Callable[[str], Sequence[int]]
  class_names: Sequence[str]
  nonsense_words: Sequence[str] = ("dax", "blicket", "wug", "zorp", "fep", "tufa", "gazzer", "toma", "kiki",
                                   "bouba")
  prompt: str = "this is a"
  suffix: str = " ."
  image_key: str = "image"
  label_key: str = "label"

  def _caption(self, name: str) -> list[int]:
    return list(self.encode(f"{self.prompt} {name}{self.suffix}"))

  def _stand_in(self, c: int, repeats: int) -> list[int]:
    return list(self.encode(" ".join([self.class_names[c]] * repeats)))

  def episodes(self, pool: dict, protocol: str, shots: int, num: int, seed: int, ways: int = 2, *,
               text_repeats: int = 0, text_support: bool = False):
    """``num`` episodes of ``protocol`` with ``shots`` support examples per class, drawn from ``pool``
    (``{class: [B_c, ...] images}``) with a generator seeded by ``(seed, shots)``.

    ``text_repeats > 0``: text-only episodes, each image replaced by its class name repeated
    ``text_repeats`` times; ``pool`` then only names the classes (its values are not read) and the
    episodes hold no images. With ``text_support`` as well, only the support examples become text and
    the query stays an image (one image per episode)."""
    if protocol not in ("fast_binding", "classification"):
      raise ConfigError(f"unknown few-shot protocol {protocol!r}; use 'fast_binding' or 'classification'")
    if text_support and not text_repeats:
      raise ConfigError("text_support needs text_repeats >= 1 (the length of a support stand-in)")
    if text_repeats and not text_support:
      pool = {c: range(shots + 1) for c in pool}  # only the classes matter
    classes = sorted(c for c, imgs in pool.items() if len(imgs) > shots)
    if len(classes) < ways:
      raise ConfigError(f"{ways}-way episodes with {shots} shots need {ways} classes with more than {shots} "
                       f"images; the pool has {len(classes)}")
    if protocol == "fast_binding" and ways > len(self.nonsense_words):
      raise ConfigError(f"{ways}-way fast binding needs {ways} nonsense words; there are "
                       f"{len(self.nonsense_words)}")
    rng = np.random.default_rng([seed, shots])
    prompt = list(self.encode(self.prompt))
    out = []
    for _ in range(num):
      chosen = [int(c) for c in rng.choice(classes, ways, replace=False)]
      if protocol == "fast_binding":
        names = [str(w) for w in rng.choice(self.nonsense_words, ways, replace=False)]
      else:
        names = [self.class_names[c] for c in chosen]
      support, images = [], []
      query_way = int(rng.integers(ways))
      query_image = None
      for w, c in enumerate(chosen):
        picks = rng.choice(len(pool[c]), shots + 1, replace=False)
        if w == query_way:
          query_image = pool[c][picks[-1]]
        support += [(pool[c][i], w) for i in picks[:shots]]
      order = rng.permutation(len(support))
      seq = []
      items = [(*support[i], self._caption(names[support[i][1]]), False) for i in order]
      for image, w, text, is_query in items + [(query_image, query_way, prompt, True)]:
        if text_repeats and not (text_support and is_query):  # the class name stands for the image
          seq += self._stand_in(chosen[w], text_repeats)
        else:
          images.append(image)
          seq.append(("image", len(images) - 1))
        seq += text
      answers = [list(self.encode(f"{self.prompt} {n}{self.suffix}"))[len(prompt):] for n in names]
      out.append(Episode(np.stack(images) if images else np.zeros((0,), np.float32), seq, answers, query_way))
    return out

  def evaluate(self, model, params, episodes: list, batch_size: int = 64) -> float:
    """Accuracy: the fraction of episodes whose correct answer has the highest log-likelihood."""
    _check_model_takes(model, episodes)
    rows, owners = [], []
    for e, ep in enumerate(episodes):
      for a in ep.answers:
        rows.append((ep, ep.prompt + a, len(a)))
        owners.append(e)
    num_prefix = getattr(model, "num_prefix", 1)
    length = max(sum(num_prefix if isinstance(x, tuple) else 1 for x in seq) for _, seq, _ in rows)
    num_images = max(1, max(len(ep.images) for ep in episodes))
    score = jax.jit(lambda p, *a: answer_log_likelihood(model, p, *a))
    scores = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # static shapes: pad with a repeat
      tokens, slots, kinds = pack([seq for _, seq, _ in chunk], num_prefix, length)
      answer = np.zeros(tokens.shape, bool)
      for b, (_, seq, n) in enumerate(chunk):
        end = sum(num_prefix if isinstance(x, tuple) else 1 for x in seq)
        answer[b, end - n:end] = True
      images = np.stack([_pad_images(ep.images, num_images) for ep, _, _ in chunk])
      scores.append(np.asarray(score(params, images, tokens, slots, kinds, answer)))
    scores = np.concatenate(scores)[:len(rows)]
    best = {}
    for s, e in zip(scores, owners, strict=True):
      best.setdefault(e, []).append(s)
    hits = [int(np.argmax(best[e]) == ep.correct) for e, ep in enumerate(episodes)]
    return float(np.mean(hits))


def evaluate_open_ended(model, params, episodes: list, batch_size: int = 64) -> float:
  """Open-ended accuracy: greedy decoding after each episode's prompt (no candidate list); an episode
  counts when the decoded tokens start with its correct answer."""
  _check_model_takes(model, episodes)
  lm = GPT2(model.lm, model.attention, model.dtype)  # Frozen's and CausalLM's LM (parameters "lm")
  num_prefix = getattr(model, "num_prefix", 1)
  length = max(sum(num_prefix if isinstance(x, tuple) else 1 for x in ep.prompt) for ep in episodes)
  num_images = max(1, max(len(ep.images) for ep in episodes))
  new = max(len(ep.answers[ep.correct]) for ep in episodes)
  embed = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method="embed_interleaved"))
  hits = []
  for start in range(0, len(episodes), batch_size):
    chunk = episodes[start:start + batch_size]
    filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
    tokens, slots, kinds = pack([ep.prompt for ep in filled], num_prefix, length)
    images = np.stack([_pad_images(ep.images, num_images) for ep in filled])
    emb, real = embed(params, images, tokens, slots, kinds)
    out = np.asarray(generate(lm, params["lm"], emb, real, new))
    for ep, row in zip(chunk, out, strict=False):
      answer = ep.answers[ep.correct]
      hits.append(int(list(row[:len(answer)]) == list(answer)))
  return float(np.mean(hits))


def _check_model_takes(model, episodes) -> None:
  """Episodes with images need a model with a vision encoder (Frozen); a language model takes text-only
  episodes (``text_repeats``)."""
  if not hasattr(model, "interleaved"):
    raise ConfigError(f"{type(model).__name__} cannot read interleaved prompts; use frozen or causal_lm")
  if not hasattr(model, "prefix") and any(len(ep.images) for ep in episodes):
    raise ConfigError(f"{type(model).__name__} has no vision encoder: score it on text-only episodes "
                      "(FewShot.episodes(..., text_repeats=n))")


def _pad_images(images: np.ndarray, n: int) -> np.ndarray:
  """``images [S, ...]`` padded with zeros to ``[n, ...]`` (unused slots; their prefixes are never read).
  Text-only episodes (no images) get ``n`` blank 1x1 images, which a text-only model ignores."""
  if len(images) == 0:
    return np.zeros((n, 1, 1), np.float32)
  if len(images) == n:
    return images
  return np.concatenate([images, np.zeros((n - len(images), *images.shape[1:]), images.dtype)])


def class_pool(data_cfg, split: str, image_key: str = "image", label_key: str = "label",
               id_key: str = "id") -> dict:
  """``{label: [N_c, ...] float images}`` of the images of ``split`` (as the pipeline gives them), each
  image once: examples whose ``id_key`` was seen already (the same image with another caption, as in
  ``digits_av_captions/all_templates``) are skipped. Datasets without ``id_key`` keep every example."""
  source = pipeline.open_split(data_cfg, split)
  pad = pipeline.PadAndCast(dict(data_cfg.max_lengths), data_cfg.truncate)
  pool: dict[int, list] = {}
  seen = set()
  for i in range(len(source)):
    ex = pad(source[i])
    if id_key in ex:
      if int(ex[id_key]) in seen:
        continue
      seen.add(int(ex[id_key]))
    pool.setdefault(int(ex[label_key]), []).append(ex[image_key])
  return {c: np.stack(v) for c, v in sorted(pool.items())}


PROTOCOLS = ("fast_binding", "classification")


def default_fewshot(config) -> FewShot:
  """The :class:`FewShot` of a Frozen config: the GPT-2 tokenizer of the Hugging Face directory
  ``config.init.path`` when the LM comes from one (``init.format = "hf_gpt2"``), else the digits captions
  vocabulary; the digit names as class names."""
  from mmjax.data.builders.digits_av import LABEL_NAMES

  if config.init.format == "hf_gpt2":
    from mmjax.data.gpt2_tokenizer import GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_dir(config.init.path)
    return FewShot(encode=tokenizer.encode, class_names=LABEL_NAMES)
  from mmjax.data.builders.digits_av_captions import encode_caption

  return FewShot(encode=lambda text: encode_caption(text).tolist(), class_names=LABEL_NAMES)


def fewshot_scores(run, params, *, protocols=PROTOCOLS, shots=(0, 1, 2, 3, 4, 5), episodes: int = 200,
                   ways: int = 2, split: str | None = None, seed: int = 0, open_ended: bool = True,
                   text_repeats: int = 2, snap_prefix: bool = False, text_support: bool = False,
                   echo=print) -> dict:
  """Few-shot accuracy of ``params`` of ``run`` (a :class:`mmjax.train.run.Run`):
  ``{protocol: {k: accuracy}}`` (scoring the candidates) and, with ``open_ended``,
  ``{protocol + "_open_ended": {k: accuracy}}`` (greedy decoding, :func:`evaluate_open_ended`), plus the
  settings.

  A Frozen model is scored on labelled images of ``split`` (default: the test split of the run's data); a
  language model alone (``causal_lm``) on text-only episodes whose images are the class names repeated
  ``text_repeats`` times (``mode: "text"`` in the result). ``snap_prefix`` scores the Frozen model with
  every prefix vector replaced by its nearest token embedding (``Frozen.snap_prefix``; not in the paper),
  the parameters unchanged; ``text_support`` gives Frozen episodes whose support examples are text
  stand-ins (``text_repeats`` words) and whose query is an image, a diagnostic of how the LM reads image
  queries apart from image support lines."""
  config = run.config
  for p in protocols:
    if p not in PROTOCOLS:
      raise ConfigError(f"unknown few-shot protocol {p!r}; available: {PROTOCOLS}")
  _check_model_takes(run.model, [])
  fs = default_fewshot(config)
  text = not hasattr(run.model, "prefix")
  model = run.model
  if text and (snap_prefix or text_support):
    raise ConfigError("snap_prefix and text_support need a Frozen checkpoint (a vision encoder)")
  if snap_prefix:
    model = model.clone(snap_prefix=True)
  if text:
    if text_repeats < 1:
      raise ConfigError(f"a language model is scored on text-only episodes: text_repeats must be >= 1, got "
                        f"{text_repeats}")
    split, pool = None, dict.fromkeys(range(len(fs.class_names)))
  else:
    split = split or config.data.test_split or config.data.eval_split
    pool = class_pool(config.data, split, run.model.image_key)
  params = jax.device_get(params)
  result = {"mode": "text" if text else "images", "split": split, "episodes": episodes, "ways": ways,
            "seed": seed}
  if text:
    result["text_repeats"] = text_repeats
  else:
    result["snap_prefix"] = snap_prefix
    result["text_support"] = text_support
    if text_support:
      result["text_repeats"] = text_repeats
  for protocol in protocols:
    result[protocol] = {}
    for k in shots:
      eps = fs.episodes(pool, protocol, k, episodes, seed, ways,
                        text_repeats=text_repeats if text or text_support else 0, text_support=text_support)
      acc = fs.evaluate(model, params, eps)
      result[protocol][str(k)] = acc
      msg = f"mmjax: few-shot {protocol} {ways}-way k={k}{' (text only)' if text else ''}: accuracy {acc:.4f}"
      if open_ended:
        result.setdefault(f"{protocol}_open_ended", {})[str(k)] = acc_open = evaluate_open_ended(
            model, params, eps)
        msg += f", open-ended {acc_open:.4f}"
      echo(f"{msg} ({episodes} episodes)")
  return result


@register("fewshot")
class FewShotEvaluator:
  """Few-shot accuracy per protocol and number of shots (see the module docstring)."""

  def __init__(self, run, **kwargs):
    self.run = run
    self.kwargs = dict(kwargs)
    for key in ("protocols", "shots"):
      if isinstance(self.kwargs.get(key), str):
        self.kwargs[key] = tuple(x.strip() for x in self.kwargs[key].split(",") if x.strip())
    if "shots" in self.kwargs:
      self.kwargs["shots"] = tuple(int(k) for k in self.kwargs["shots"])
    _check_model_takes(run.model, [])

  def evaluate(self, params, *, step: int, name: str) -> Result:
    result = fewshot_scores(self.run, params, echo=lambda *a: None, **self.kwargs)
    metrics = {f"{protocol}/{k}": acc for protocol, by_k in result.items() if isinstance(by_k, dict)
               for k, acc in by_k.items()}
    files = []
    if self.run.is_main:
      files.append(write_json(self.run.workdir / "fewshot" / f"{name}-step{step:06d}.json",
                              {**result, "step": step}))
    return Result(metrics, files=files)
