"""The user-error boundary: every mistake a user can make raises a subclass of :class:`UserError`.

The command line (``mmjax.cli``) turns a :class:`UserError` into one paragraph on stderr and exit status 2,
without a traceback (``--debug`` shows it); any other exception is a bug in mmjax and keeps its traceback
(exit status 1). Library users catch :class:`UserError` to tell the two apart.
"""

from __future__ import annotations


class UserError(Exception):
  """A mistake in what the user asked for (a config, a path, a dataset, a checkpoint); the message says
  what was wrong and how to fix it."""


class ConfigError(UserError, ValueError):
  """A config file or override that does not fit the schema, or a value out of its range."""


class InputError(UserError, ValueError):
  """Arrays given to a model, a layer or a task that do not fit it: a missing modality, batch sizes or
  mask shapes that disagree, a wrong dtype, labels out of range."""
