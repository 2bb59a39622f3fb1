"""Tile sizes per implementation and platform: what ``model.block_size='auto'``
means, and why a forced size cannot run.

- CPU, ``flash`` and ``blockwise``: 512, the fastest tile measured
  (docs/benchmarks.md, "Tile size": flash forward + backward at 8192 tokens,
  0.72 s at 512 against 1.14 s at 128, 0.97 s at 256, 0.75 s at 1024, 0.99 s at
  2048).
- GPU, ``pallas`` (Triton): the largest power-of-two tiles whose shared memory
  fits the device by ``pallas_tiles.smem_bytes``, the estimate kept next to the
  kernels; ``pallas_tiles.launch`` gives the warps and pipeline stages per tile.
- TPU, ``pallas`` (Mosaic walk): 512, a multiple of 128 as Mosaic's blocks need
  (splash chooses its own blocks, ``vendor.SPLASH_BLOCKS``).
- Elsewhere (``flash`` on GPU / TPU, not yet measured there): 512.

A forced integer is used as given where it can run, and is a one-line config
error saying why where it cannot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.models.kernels import pallas_tiles as pt

AUTO = 512
MOSAIC_MULTIPLE = 128
# Shared memory per block (bytes) by compute capability; unknown GPUs get the least.
SMEM = {'9.0': 232448, '10.0': 232448, '8.0': 166912, '8.7': 166912}
SMEM_LEAST = 101376


def smem_limit() -> int:
  """This GPU's shared memory per block (H100 / H200's when cross-lowering on a CPU)."""
  device = jax.devices()[0]
  if device.platform != 'gpu':
    return SMEM['9.0']
  return SMEM.get(str(getattr(device, 'compute_capability', '')), SMEM_LEAST)


def gpu_tiles(head_dim: int, itemsize: int, limit: int) -> tuple[int, int]:
  """The largest ``(block_q, block_k)`` (area, then query tile) whose kernels fit
  ``limit`` bytes."""
  sizes = (128, 64, 32, 16)
  for bq, bk in sorted(((q, k) for q in sizes for k in sizes if k <= q),
                       key=lambda t: (-t[0] * t[1], -t[0])):
    if max(pt.smem_bytes(bq, bk, head_dim, itemsize).values()) <= limit:
      return bq, bk
  raise ValueError(f'model.head_dim: {head_dim} leaves no Pallas tile within {limit} bytes '
                   'of shared memory; allowed: attention=flash')


def _platform() -> str:
  return pt.PLATFORM or jax.default_backend()


def _qk_dim(cfg) -> int:
  """The widest q/k head any layer's encoding gives (its ``qk_width`` x head dim): the
  shared-memory estimate counts it for q, k and v (an upper bound)."""
  return cfg.head_dim * max(layer.encoding_class.qk_width for layer in cfg.layer_configs())


def _why_not(cfg, block: int, length: int) -> str | None:
  """Why a forced ``pallas`` tile cannot run here (None: it can)."""
  platform = _platform()
  if platform == 'tpu' and block % MOSAIC_MULTIPLE and block < length:
    return f'Mosaic needs tiles that are multiples of {MOSAIC_MULTIPLE}'
  if platform != 'gpu':
    return None
  if block < 16 or block & (block - 1):
    return 'Triton needs power-of-two tiles of at least 16'
  itemsize, limit = jnp.dtype(cfg.activation_dtype).itemsize, smem_limit()
  need = max(pt.smem_bytes(block, block, _qk_dim(cfg), itemsize).values())
  if need > limit:
    return (f'its kernels need {need // 1024} KiB of shared memory per program at head dim '
            f'{_qk_dim(cfg)} in {cfg.dtype}, over this GPU\'s {limit // 1024} KiB')
  return None


def tiles(cfg, impl: str, length: int) -> tuple[int, int]:
  """``(block_q, block_k)`` of ``impl`` for ``cfg`` on this platform."""
  if cfg.block_size != 'auto':
    why = _why_not(cfg, cfg.block_size, length) if impl == 'pallas' else None
    if why:
      raise ValueError(f'model.block_size: got {cfg.block_size} for attention=pallas on '
                       f'{_platform()}: {why}; allowed: \'auto\' (here '
                       f'{" x ".join(map(str, _auto(cfg, impl)))})')
    return cfg.block_size, cfg.block_size
  return _auto(cfg, impl)


def _auto(cfg, impl: str) -> tuple[int, int]:
  if impl == 'pallas' and _platform() == 'gpu':
    return gpu_tiles(_qk_dim(cfg), jnp.dtype(cfg.activation_dtype).itemsize, smem_limit())
  return AUTO, AUTO
