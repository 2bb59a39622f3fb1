"""Transformer models over any registered positional encoding."""
from posjax.models.attention import Attention, attend
from posjax.models.config import ModelConfig
from posjax.models.sampling import decode_step, init_cache, sample
from posjax.models.transformer import (Decoder, Encoder, EncoderClassifier, Matcher, build,
                                      stack_layers, unstack_layers)
