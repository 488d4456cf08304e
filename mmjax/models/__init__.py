"""One file per model; importing this package registers every model and every weight loader
(:mod:`mmjax.models.convert`) in :mod:`mmjax.models.registry`."""

from mmjax.models import (  # noqa: F401  (registration side effects)
    causal_lm,
    clip,
    early_fusion,
    frozen,
    late_fusion,
    lmf,
    mag,
    mbt,
    mctn,
    mfm,
    mmvae,
    mult,
    mvae,
    tfn,
    vilbert,
    visualbert,
)
from mmjax.models.convert import hf_bert, hf_gpt2, mult_torch  # noqa: F401  (loader registration)
from mmjax.models.registry import (
    build,
    fields,
    get,
    loader,
    loader_names,
    names,
    nested_fields,
    register,
    register_loader,
)

__all__ = ["build", "fields", "get", "loader", "loader_names", "names", "nested_fields", "register",
           "register_loader"]
