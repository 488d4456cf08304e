"""TFDS builders of mmjax; importing this package registers them with tfds."""

from mmjax.data.builders.digits_av import DigitsAv

__all__ = ["DigitsAv"]
