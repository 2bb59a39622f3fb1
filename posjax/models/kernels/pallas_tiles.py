"""What the Pallas kernels of ``posjax.models.kernels.pallas`` share: how a
program walks its inner tiles (``Walk``: a loop on GPU, a grid axis on TPU), the
block specs of that grid, 2D dots, compiler parameters per platform, and the
encoding's bias as a kernel function of explicit operands (``tile_bias``).

``PLATFORM`` and ``GRID`` override the platform and the walk, so the CPU tests
can cross-lower for Triton and Mosaic and run both walks in interpret mode.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.extend import core as jax_core

from posjax.encodings.base import in_kernel, take_head
from posjax.models.kernels.blocks import Inputs

_f32 = jnp.float32
# The lowering each backend gets: Triton on GPU, Mosaic on TPU.
PLATFORM = None  # None: jax.default_backend(); 'gpu' / 'tpu' to cross-lower.


GRID = None  # None: grid over inner tiles on TPU only (``Walk``); True / False to force.


STAGES = 2  # Triton's software pipeline depth for the inner loop's loads.


def smem_bytes(bq: int, bk: int, head_dim: int, itemsize: int, stages: int = STAGES
               ) -> dict[str, int]:
  """Shared memory a Triton program of each kernel asks for, estimated as
  Triton's pipeliner allocates it: one buffer for each tile a program loads once
  (its outer tile) and ``stages`` for each tile it loads in the inner loop, all
  ``[tile, head_dim]`` in the model's dtype (dO included; the rows of
  log-sum-exp and positions are negligible). The first H200 run checks it: 128 x
  128 tiles at head dim 128 in bf16, with dO then float32, asked for 262144
  bytes, which is this estimate's dk/dv kernel (2 x 32 KiB of k, v, plus 2
  stages x (32 KiB of q + 64 KiB of dO)) over the 227 KiB there."""
  tile = lambda rows: rows * head_dim * itemsize  # noqa: E731
  return {'forward': tile(bq) + stages * 2 * tile(bk),   # q; k, v
          'dq': 2 * tile(bq) + stages * 2 * tile(bk),    # q, dO; k, v
          'dkv': 2 * tile(bk) + stages * 2 * tile(bq)}   # k, v; q, dO


def launch(block_q: int, block_k: int) -> dict[str, int]:
  """Triton's warps and stages per tile: 8 warps from 128 x 128 (as Triton's
  flash-attention tutorial), else 4."""
  return {'num_warps': 8 if block_q * block_k >= 128 * 128 else 4, 'num_stages': STAGES}


def compiler_params(grid: bool, tiles=None):
  platform = PLATFORM or jax.default_backend()
  if platform == 'gpu':
    from jax.experimental.pallas import triton as pl_triton
    return pl_triton.CompilerParams(**launch(tiles.bq, tiles.bk))
  if platform == 'tpu':
    from jax.experimental.pallas import tpu as pl_tpu
    return pl_tpu.CompilerParams(
        dimension_semantics=('parallel',) * 3 + (('arbitrary',) if grid else ()))
  return None


def ints_of(*arrays):
  """Positions, slots and segments as ``[B, 1, n]``: blocks ``(1, 1, tile)`` meet
  Mosaic's rule on the last two block dimensions (full, or 8 x 128 multiples)."""
  return tuple(a[:, None, :] for a in arrays)


def heads_first(a):
  """``[B, L, H, ...]`` -> ``[B, H, L, ...]``; ``[B, L, H]`` -> ``[B, H, 1, L]``."""
  return jnp.moveaxis(a, 1, 2) if a.ndim == 4 else jnp.moveaxis(a, 1, 2)[:, :, None]


def dot(a, b, contract=(1, 0)):
  """A 2D matmul, float32 out: ``a @ b`` (contract (1, 0)), ``a @ b.T`` ((1, 1)) or
  ``a.T @ b`` ((0, 0)); operands in the narrower of their dtypes (bf16 for bf16
  models: probabilities meet values in bf16, as in FlashAttention)."""
  dtype = min(a.dtype, b.dtype, key=lambda d: jnp.finfo(d).bits)
  return jax.lax.dot_general(a.astype(dtype), b.astype(dtype),
                             (((contract[0],), (contract[1],)), ((), ())),
                             preferred_element_type=_f32)


def tile_bias(module, variables, x: Inputs, num_heads: int, *, grad: bool = False):
  """The encoding's bias of one tile for one head, ``fn(*ops, qpos, kpos, mask, h)
  -> [bq, bk]``, as a function of explicit operands only (Pallas kernels take
  arrays as inputs, never captured constants): the hook traced once at tile
  shapes under ``encodings.in_kernel(h)``, its constants hoisted next to the
  variables. Returns ``(fn, ops, n_consts)``."""
  t = x.t
  K = x.q.shape[-1]
  sample = (x.qpos[:1, :t.bq], x.kpos[:1, :t.bk], jnp.ones((1, t.bq, t.bk), bool),
            jnp.zeros((), jnp.int32))

  def bias(variables, qpos, kpos, mask, h):
    q, k = jnp.zeros((1, t.bq, num_heads, K), _f32), jnp.zeros((1, t.bk, num_heads, K), _f32)
    with in_kernel(h, grad=grad):
      out = module.apply(variables, q, k, qpos, kpos, mask, None, method='bias')[0]
    return jnp.zeros((1, 1, t.bq, t.bk), _f32) if out is None else out

  closed = jax.make_jaxpr(bias)(variables, *sample)
  n_consts = len(closed.consts)
  ops = [jnp.asarray(c) for c in closed.consts] + jax.tree.leaves(variables)
  shapes = [a.shape for a in ops]

  def fn(*args):
    ops = [a.reshape(shape) for a, shape in zip(args, shapes)]
    qpos, kpos, mask, h = args[len(shapes):]
    run = jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(closed.jaxpr, ops[:n_consts]))
    heads = run(*ops[n_consts:], qpos, kpos, mask, h)[0][0]  # [1, bq, bk], or [H, ...]
    # A hook that reads its heads through per_head gave one; any other gave all.
    return (heads if heads.shape[0] == 1 else take_head(heads, h))[0]

  # Operands of rank < 2 travel as [1, n] (Mosaic lays out rank-1 blocks by chip).
  return fn, [a.reshape((1,) * (2 - a.ndim) + a.shape) for a in ops], n_consts


class Walk:
  """How a program visits its inner tiles (key tiles of a query tile, or the
  reverse). Loop (Triton): one program per outer tile reads the inner tiles from
  whole-row blocks in a ``fori_loop``. Grid (Mosaic): the inner tile is the last,
  sequential grid axis, each block holds one tile (so VMEM holds tiles, not rows),
  and the running state lives in VMEM scratch between grid steps."""

  def __init__(self, grid: bool, size: int):
    self.grid, self.size = grid, size

  def at(self, j):
    """The inner tile ``j`` of an inner-side block."""
    return slice(None) if self.grid else pl.ds(j * self.size, self.size)

  def run(self, n: int, bounds, visible, step, init, finish, scratch):
    """``finish(state)`` after ``state = step(j, state)`` for the visible tiles
    ``first <= j < end`` of ``n`` (``bounds``), from ``init()``."""
    first, end = bounds
    if not self.grid:
      body = lambda j, s: jax.lax.cond(visible(j), functools.partial(step, j),  # noqa: E731
                                       lambda s: s, s)
      return finish(jax.lax.fori_loop(first, end, body, init()))
    j = pl.program_id(3)
    like = jax.eval_shape(init)
    load = lambda: jax.tree.unflatten(jax.tree.structure(like), [  # noqa: E731
        r[0] if a.ndim == 1 else r[...] for r, a in zip(scratch, jax.tree.leaves(like))])

    def store(state):
      for r, a in zip(scratch, jax.tree.leaves(state)):
        r[...] = a[None] if a.ndim == 1 else a

    pl.when(j == 0)(lambda: store(init()))
    pl.when((j >= first) & (j < end) & visible(j))(lambda: store(step(j, load())))
    pl.when(j == n - 1)(lambda: finish(load()))

  def scratch(self, state_shapes):
    """VMEM scratch for a state of these shapes (rank 1 kept as ``[1, n]``)."""
    if not self.grid:
      return ()
    from jax.experimental.pallas import tpu as pl_tpu
    return [pl_tpu.VMEM((1,) + tuple(s) if len(s) == 1 else tuple(s), _f32)
            for s in state_shapes]


def query_tiles(t, i):
  """Query tiles ``[first, end)`` that can see key tile ``i`` (all of them
  unless the keys are aligned with the queries' slots)."""
  if not t.span.aligned:
    return jnp.asarray(0, jnp.int32), jnp.asarray(t.nq, jnp.int32)
  return t.span.query_tile_range(i * t.bk, (i + 1) * t.bk - 1, t.bq, t.nq)


def clamp_keys(t):
  """Grid mode: query tile i needs the key tiles of its span (causal bound,
  window, chunk); other steps keep the nearest such block, so Mosaic fetches
  nothing for them."""
  def index(i, j):
    first, end = t.span.key_tile_range(i * t.bq, (i + 1) * t.bq - 1, t.bk, t.nk)
    return jnp.clip(j, first, jnp.maximum(end - 1, first))
  return index


def clamp_queries(t):
  """Grid mode: key tile i is seen from the query tiles of ``query_tiles``."""
  def index(i, j):
    first, end = query_tiles(t, i)
    return jnp.clip(j, first, end - 1)
  return index


def grid_mode() -> bool:
  return (PLATFORM or jax.default_backend()) == 'tpu' if GRID is None else GRID


def specs(grid: bool, tile: int, total: int):
  """BlockSpec makers for the (b, h, outer i[, inner j]) grid: ``outer(n, width)``
  for an outer-side array, ``inner(width, clamp)`` for an inner-side one: the
  whole row (``total``), or in grid mode the tile ``clamp(i, j)`` (default j;
  clamped so that the tiles the causal mask skips are not fetched). Width None:
  ``[B, 1, n]`` ints; 'row': ``[B, H, 1, n]``; a number: ``[B, H, n, width]``."""
  def spec(n, width, index):
    if width is None:
      return pl.BlockSpec((1, 1, n), lambda b, h, *g: (b, 0, index(*g)))
    if width == 'row':
      return pl.BlockSpec((1, 1, 1, n), lambda b, h, *g: (b, h, 0, index(*g)))
    return pl.BlockSpec((1, 1, n, width), lambda b, h, *g: (b, h, index(*g), 0))

  def outer(n, width=None):
    return spec(n, width, lambda i, *j: i)

  def inner(width=None, clamp=None):
    if not grid:
      return spec(total, width, lambda i: 0)
    return spec(tile, width, clamp or (lambda i, j: j))
  return outer, inner


def op_specs(ops):
  return [pl.BlockSpec(a.shape, lambda *g, n=a.ndim: (0,) * n) for a in ops]
