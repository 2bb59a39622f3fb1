"""Datasets (TFDS builders, array_record) and grain pipelines; ``inputs`` picks
what an experiment config reads."""
