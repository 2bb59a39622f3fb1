"""Which keys a query may attend to (besides sharing its segment).

``Span`` is the one description every implementation receives: causal or not, a
sliding ``window`` (Longformer, Mistral, Gemma), Llama 4's ``chunk``ed attention,
and ``sinks`` (StreamingLLM's first tokens, always visible). The same object
gives the pair mask (``pairs``), a tile test that is never wrong when it says no
(``tile_may_see``), whether a tile needs no mask (``tile_is_full``) and, when key
slot j sits at index j (``aligned``: a full pass or a cache filled from slot 0),
the key tiles a query tile can reach (``key_tile_range``), so flash and the
Pallas kernels visit O(window / tile) key tiles per query tile: time linear in
length.

Windows count slots (token indices in the row: ``|i - j| < window``); chunks and
sinks count positions, so that in a packed row each document has its own chunks
(``pos_i // chunk == pos_j // chunk``) and its own first ``sinks`` tokens
(``pos_j < sinks``), as if it were alone. A chunk is also a window of its
length (``|i - j| < chunk``, implied when positions increase by at least 1 per
token), which bounds its tiles by slots alone.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

_BIG = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Span:
  causal: bool = False
  window: int = 0    # > 0: |i - j| < window (slots)
  chunk: int = 0     # > 0: pos_i // chunk == pos_j // chunk (and |i - j| < chunk)
  sinks: int = 0     # > 0: keys at positions < sinks are visible whatever the window / chunk
  aligned: bool = True  # key slot j is at index j (False: a rolling cache)
  exclude_current: bool = False  # the query's own key is not seen (stick-breaking: j < i)

  @property
  def local(self) -> bool:
    return bool(self.window or self.chunk)

  @property
  def reach(self) -> int:
    """The largest slot distance a window or chunk allows (0: unbounded)."""
    return min(w for w in (self.window, self.chunk) if w) if self.local else 0

  def pairs(self, qidx_BxL, kidx_BxS, qpos_BxL, kpos_BxS):
    """``[B, L, S]`` True where query i may see key j (key slots < 0: empty)."""
    i, j = qidx_BxL[:, :, None], kidx_BxS[:, None, :]
    ok = j >= 0
    if self.causal:
      ok &= j <= i
    if self.exclude_current:
      ok &= j != i
    if not self.local:
      return ok
    near = (i - j < self.reach) & (j - i < self.reach)
    if self.chunk:
      near &= (qpos_BxL[:, :, None] // self.chunk) == (kpos_BxS[:, None, :] // self.chunk)
    if self.sinks:
      near |= kpos_BxS[:, None, :] < self.sinks
    return ok & near

  @staticmethod
  def _bounds(x, valid):
    return jnp.where(valid, x, _BIG).min(1), jnp.where(valid, x, -_BIG).max(1)

  def tile_may_see(self, qidx_t, kidx_t, kpos_t):
    """``[B]`` False only if no (query, key) pair of the tile is in the span."""
    (qlo, qhi), (klo, khi) = self._bounds(qidx_t, qidx_t >= 0), self._bounds(kidx_t, kidx_t >= 0)
    ok = (klo <= khi) & (qlo <= qhi)
    if self.causal:
      ok &= klo <= qhi
    if not self.local:
      return ok
    near = (khi > qlo - self.reach) & (klo < qhi + self.reach)
    if self.sinks:
      near |= self._bounds(kpos_t, kidx_t >= 0)[0] < self.sinks
    return ok & near

  def tile_is_full(self, qidx_t, kidx_t, qpos_t, kpos_t):
    """``[B]`` True only if every pair of the tile is in the span (all slots valid)."""
    (qlo, qhi), (klo, khi) = self._bounds(qidx_t, True), self._bounds(kidx_t, True)
    ok = (klo >= 0) & (qlo >= 0)
    if self.causal:
      ok &= (khi < qlo) if self.exclude_current else (khi <= qlo)
    elif self.exclude_current:
      ok &= (khi < qlo) | (klo > qhi)
    if self.local:
      ok &= (qhi - klo < self.reach) & (khi - qlo < self.reach)
    if self.chunk:
      lo, hi = self._bounds(jnp.concatenate([qpos_t, kpos_t], 1) // self.chunk, True)
      ok &= lo == hi
    return ok

  def key_tiles(self, qidx_t, bk: int, nk: int):
    """Key tiles ``[first, end)`` that can hold a visible key for this query tile
    (all rows of the tile: scalars; padding query rows are -1)."""
    qlo = jnp.where(qidx_t >= 0, qidx_t, _BIG).min()
    return self.key_tile_range(qlo, jnp.max(qidx_t), bk, nk)

  def key_tile_range(self, qlo, qhi, bk: int, nk: int):
    """Key tiles ``[first, end)`` that can hold a key visible from query slots
    ``qlo..qhi``. A rolling cache (not aligned) gets every tile: a chunk's keys follow
    the cache, at indices above their slots until the cache has filled (a prefill),
    so no slot bound holds there; the tile test (``tile_may_see``) skips empty tiles."""
    end = jnp.asarray(nk, jnp.int32)
    if self.causal and self.aligned:
      end = jnp.minimum(end, qhi // bk + 1)
    first = jnp.asarray(0, jnp.int32)
    if self.aligned and self.local:
      end = jnp.minimum(end, (qhi + self.reach - 1) // bk + 1)
      if not self.sinks:  # (A packed row's documents each have sinks.)
        first = jnp.maximum(first, (qlo - self.reach + 1) // bk)
    end = jnp.clip(end, 0, nk).astype(jnp.int32)
    return jnp.clip(first, 0, end).astype(jnp.int32), end

  def query_tile_range(self, klo, khi, bq: int, nq: int):
    """Query tiles ``[first, end)`` of an aligned pass that can see a key among
    slots ``klo..khi``."""
    first, end = jnp.asarray(0, jnp.int32), jnp.asarray(nq, jnp.int32)
    if self.causal:
      first = jnp.maximum(first, klo // bq)
    if self.local and not self.sinks:
      first = jnp.maximum(first, (klo - self.reach + 1) // bq)
      end = jnp.minimum(end, (khi + self.reach - 1) // bq + 1)
    end = jnp.clip(end, 1, nq).astype(jnp.int32)
    return jnp.clip(first, 0, end - 1).astype(jnp.int32), end
