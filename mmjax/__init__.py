"""mmjax: a JAX/Flax (linen) model zoo for multimodal machine learning.

Subpackages, in import order (each may import only those before it):
``layers`` (building blocks) <- ``models`` (one file per paper) <- ``tasks`` (losses and metrics)
<- ``train`` (the engine) <- ``cli``. ``data`` knows no model and no loop.
"""

__version__ = "0.1.0"
