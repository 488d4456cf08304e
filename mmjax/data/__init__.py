"""Datasets (TFDS builders under ``builders/``) and the grain input pipeline (``pipeline.py``)."""
