"""Vendor fused attention for encodings with no bias or value hook.

``cudnn`` (GPU): ``jax.nn.dot_product_attention(implementation='cudnn')``, the
cuDNN flash kernel, bf16 / fp16, head dim a multiple of 8 up to 128 (256 from
Hopper on). ``splash`` (TPU): ``jax.experimental.pallas.ops.tpu.splash_attention``
with a causal (or full) mask and segment ids, lengths a multiple of 128.

``cudnn`` and ``splash`` take q, k and v only, so they serve the encodings whose class
declares neither ``bias`` nor ``values`` in ``acts_at`` (none, sinusoidal,
learned, the rotary family, the 2D variants): ``qk`` and ``embed`` have run
before attention. ``why_not`` gives the reason a kernel cannot serve a config
(the config error, and ``auto``'s fallback); attention never branches on names.

Packed segments: splash takes segment ids; cuDNN gets them as a boolean mask
(``[B, 1, L, S]``, which cuDNN turns into a bias), plus its causal mask. Cached
decoding (queries fewer than keys) is not served: attention uses its own
implementations there.

``POSJAX_EMULATE_KERNELS=1`` runs them on any backend, cuDNN as
``implementation='xla'``, splash and ``pallas`` in Pallas interpret mode: the tests check
the wrappers on CPU that way, and a GPU / TPU config can be debugged on a laptop.
"""
from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import BIAS, VALUES

# Where each kernel runs. ``pallas`` (``posjax.models.kernels.pallas``): flash
# attention with the bias computed in-kernel; ``auto`` does not pick it yet (it
# lowers for both devices but has not run on one).
PLATFORMS = {'cudnn': ('gpu',), 'splash': ('tpu',), 'pallas': ('gpu', 'tpu')}
AUTO = {'gpu': 'cudnn', 'tpu': 'splash'}
CUDNN_DTYPES = ('bfloat16', 'float16')
SPLASH_MULTIPLE = 128
SPLASH_BLOCKS = (512, 256, 128)  # The largest dividing the length is used.


def emulated() -> bool:
  return os.environ.get('POSJAX_EMULATE_KERNELS', '') == '1'


def _cudnn_head_dim_max() -> int:
  try:
    cc = float(getattr(jax.devices()[0], 'compute_capability', '0') or 0)
  except (ValueError, RuntimeError):
    cc = 0.0
  return 256 if cc >= 9.0 else 128


def why_not(kernel: str, mcfg, length: int | None = None) -> str | None:
  """Why ``kernel`` cannot serve this model config here (None: it can)."""
  if mcfg.layer_pattern:
    return next(filter(None, (why_not(kernel, layer, length)
                              for layer in mcfg.layer_configs())), None)
  if mcfg.normalizer != 'softmax':
    return f'{kernel} computes a softmax only (normalizer={mcfg.normalizer}: use flash)'
  platform = jax.default_backend()
  if platform not in PLATFORMS[kernel] and not emulated():
    return f'{kernel} needs a {" or ".join(PLATFORMS[kernel])}; this platform is {platform}'
  if kernel != 'pallas' and (mcfg.span.local or mcfg.sink_tokens or mcfg.sinks != 'none'):
    return f'{kernel} is used here with a causal or full mask only (no window, chunk or sinks)'
  cls = mcfg.encoding_class
  hooks = set(cls.acts_at) & {BIAS, VALUES}
  if kernel == 'pallas' and (cls.bias_in_kernel or (emulated() and cls.bias_from_positions)):
    hooks -= {BIAS}  # (Interpret mode runs any position-only bias.)
  if hooks:
    return (f'posenc={mcfg.posenc} acts at {", ".join(sorted(hooks))}, which {kernel} cannot '
            'take (use flash)')
  length = mcfg.max_len if length is None else length
  if kernel == 'cudnn' and cls.qk_width != 1:
    return (f'posenc={mcfg.posenc} widens q and k to {cls.qk_width}x the head dim of v, '
            'which cudnn cannot take (use flash)')
  if kernel == 'cudnn':
    if mcfg.dtype not in CUDNN_DTYPES:
      return f'cudnn needs model.dtype in {", ".join(CUDNN_DTYPES)}; got {mcfg.dtype}'
    top = _cudnn_head_dim_max()
    if mcfg.head_dim % 8 or mcfg.head_dim > top:
      return f'cudnn needs a head dim that is a multiple of 8 up to {top}; got {mcfg.head_dim}'
  if kernel == 'splash' and length % SPLASH_MULTIPLE:
    return f'splash needs lengths that are multiples of {SPLASH_MULTIPLE}; got {length}'
  return None


def cudnn_attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qseg_BxL, kseg_BxS, *, causal: bool,
                 scale: float, implementation: str | None = None):
  """cuDNN flash attention; ``[B, L, H, K]`` in v's dtype."""
  implementation = implementation or ('xla' if emulated() else 'cudnn')
  dtype = v_BxSxHxK.dtype
  same = (qseg_BxL[:, :, None] == kseg_BxS[:, None, :])[:, None]
  out = jax.nn.dot_product_attention(
      q_BxLxHxK.astype(dtype), k_BxSxHxK.astype(dtype), v_BxSxHxK, mask=same,
      is_causal=causal, scale=scale, implementation=implementation)
  return out.astype(dtype)


def _splash_kernel(length: int, heads: int, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  b = next(b for b in SPLASH_BLOCKS if length % b == 0)
  one = sa.CausalMask((length, length)) if causal else sa.FullMask((length, length))
  sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                        block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  # Not cached: the kernel keeps arrays of the trace that first called it.
  return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), block_sizes=sizes,
                            head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, qseg_BxL, kseg_BxS, *, causal, interpret):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  kernel = _splash_kernel(q_BxHxLxK.shape[2], q_BxHxLxK.shape[1], causal, interpret)
  one = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sa.SegmentIds(q=qs, kv=ks))  # noqa: E731
  return jax.vmap(one)(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, qseg_BxL, kseg_BxS)


def splash_attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qseg_BxL, kseg_BxS, *, causal: bool,
                  scale: float, interpret: bool | None = None):
  """Splash attention; ``[B, L, H, K]`` in v's dtype.

  Under a mesh the kernel runs per shard (``jax.shard_map``): rows split as the
  logical ``batch`` axis and heads as ``heads`` are, length whole.
  """
  interpret = emulated() if interpret is None else interpret
  L = q_BxLxHxK.shape[1]
  if L % SPLASH_MULTIPLE:
    raise ValueError(f'model.attention: got \'splash\' for length {L}; allowed: lengths '
                     f'that are multiples of {SPLASH_MULTIPLE}')
  dtype = v_BxSxHxK.dtype
  heads_first = lambda x: jnp.swapaxes(x.astype(dtype), 1, 2)  # noqa: E731
  args = (heads_first(q_BxLxHxK * scale), heads_first(k_BxSxHxK), heads_first(v_BxSxHxK),
          qseg_BxL.astype(jnp.int32), kseg_BxS.astype(jnp.int32))
  run = functools.partial(_splash_local, causal=causal, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    rows, heads = (nn.logical_to_mesh_axes(('batch', 'heads')) or (None, None))
    x = jax.P(rows, heads, None, None)
    run = jax.shard_map(run, in_specs=(x, x, x, jax.P(rows, None), jax.P(rows, None)),
                        out_specs=x, check_vma=False)
  return jnp.swapaxes(run(*args), 1, 2).astype(dtype)


def attend(kernel: str, *args, **kwargs):
  return {'cudnn': cudnn_attend, 'splash': splash_attend}[kernel](*args, **kwargs)


def for_platform() -> str | None:
  """The fused kernel ``auto`` takes on this backend (None on CPU)."""
  return AUTO.get(jax.default_backend())
