"""posjax: positional encodings for transformers, in JAX/Flax."""
