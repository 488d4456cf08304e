"""One file per model; importing this package registers every model in :mod:`mmjax.models.registry`."""

from mmjax.models import (  # noqa: F401  (registration side effects)
    early_fusion,
    frozen,
    gpt2,
    late_fusion,
    mfm,
    mmvae,
    mult,
    mvae,
)
from mmjax.models.registry import build, fields, get, names, register

__all__ = ["build", "fields", "get", "names", "register"]
