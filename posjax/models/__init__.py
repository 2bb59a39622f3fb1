"""Transformer models over any registered positional encoding.

  config        ``ModelConfig``: one frozen config, built from ``config.model``
  transformer   the decoder LM, the encoder classifier and the two-tower matcher
  attention     the attention layer and the dispatcher over ``kernels/``
  kernels/      the attention implementations (dense ... Pallas, vendor kernels)
  sampling      autoregressive sampling over a KV cache

Imports ``posjax.encodings`` only.
"""
from posjax.models.attention import Attention
from posjax.models.config import ModelConfig
from posjax.models.sampling import decode_step, init_cache, sample
from posjax.models.transformer import (Decoder, Encoder, EncoderClassifier, Matcher, build,
                                      stack_layers, unstack_layers)
