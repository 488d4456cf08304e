"""One file per model; importing this package registers every model in :mod:`mmjax.models.registry`."""

from mmjax.models import early_fusion, late_fusion, mfm, mmvae, mult, mvae  # noqa: F401  (registration side effects)
from mmjax.models.registry import build, fields, get, names, register

__all__ = ["build", "fields", "get", "names", "register"]
