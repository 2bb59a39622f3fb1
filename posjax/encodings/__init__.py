"""Positional encodings: pure functions of explicit positions behind one registry.

Importing this package registers every encoding; ``names()`` lists them. Each
module imports ``base`` (the hook contract) and ``registry``, and nothing else of
posjax: an encoding is math on positions, below every other package.
"""
from posjax.encodings.base import BIAS, EMBED, QK, TOKENS, VALUES, Encoding, relative
from posjax.encodings.registry import get, make, names, register
from posjax.encodings.absolute import sinusoidal_embedding
from posjax.encodings.rotary import apply_rope, rope_inv_freq
from posjax.encodings.mrope import apply_mrope
from posjax.encodings.hf_rope import layer_pattern_from_hf, rope_args_from_hf
from posjax.encodings.length_scaling import llama4_attention_scale, logn_attention_scale
from posjax.encodings.relative_bias import alibi_slopes, t5_relative_position_bucket
from posjax.encodings import distance_bias  # noqa: F401  (registration)
from posjax.encodings import relative_vectors, cope  # noqa: F401  (registration)
from posjax.encodings import dape  # noqa: F401  (registration)
from posjax.encodings.pope import apply_pope, pope_inv_freq
from posjax.encodings.randomized import randomized_positions
from posjax.encodings import forgetting  # noqa: F401  (registration)
from posjax.encodings import path  # noqa: F401  (registration)
