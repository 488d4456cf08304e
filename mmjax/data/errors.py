"""The data layer's user error (its own module, so that builders can raise it without importing the
pipeline, which imports the builders)."""

from __future__ import annotations

from mmjax.errors import UserError


class DatasetError(UserError, RuntimeError):
  """A dataset that is unknown, not prepared, damaged, or whose files or examples do not fit."""
