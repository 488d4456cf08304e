"""Evaluators named in the config, in the style of big_vision's ``evaluators``.

``config.evaluators`` maps a KEY to ``{"name": a registered evaluator, "every": steps between runs (0 = only
at the end of training), "kwargs": its arguments}``; the engine builds each one with :func:`build` and
calls it at its own steps, and never imports an evaluator module by name. Registered evaluators:

* ``split_metrics`` — the task's metrics on a split (and a confusion matrix for classification);
* ``cross_modal`` — cross-modal coherence of generative models, and PNG grids of generations;
* ``fewshot`` — interleaved few-shot accuracy of Frozen (and of a causal LM on text stand-ins);
* ``robustness`` — the task's metric as each modality is dropped or noised (MultiBench-style), JSON + PNG;
* ``zero_shot`` — zero-shot classification, retrieval Recall@K and a linear probe of a dual encoder (CLIP).

An evaluator is a class registered with :func:`register`, constructed as ``cls(run, **kwargs)`` and called
as ``evaluate(params, *, step, name) -> Result``. ``run`` is the :class:`mmjax.train.run.Run` being trained
or restored: evaluators read ``run.config``, ``run.model``, ``run.task``, ``run.workdir``, iterate global
batches with ``run.eval_batches(split)``, evaluate with ``run.eval_step``, and open other runs with
``run.open_run(workdir)``. ``name`` is the key the metrics are logged under (the config KEY, or
``KEY_ema`` for the EMA parameters): evaluators use it to name the files they write.
"""

from mmjax.evaluators import cross_modal, fewshot, robustness, split_metrics, zero_shot  # noqa: F401  (registration)
from mmjax.evaluators.registry import Result, build, get, names, register, specs

__all__ = ["Result", "build", "get", "names", "register", "specs"]
