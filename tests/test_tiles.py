"""``model.block_size``: 'auto' per implementation and platform
(``kernels.tile_sizes``), forced sizes, and the Pallas kernels' shared memory on
GPUs by the estimate kept beside them (``pallas_tiles.smem_bytes``)."""
import pytest

from posjax import config_lib, models
from posjax.models.kernels import pallas_tiles, tile_sizes

H100, A100 = 227 * 1024, 163 * 1024


def _cfg(**kw):
  return models.ModelConfig.from_config(dict(config_lib.base_config('alibi').model.to_dict(),
                                             **kw))


def test_block_size_defaults_to_auto_and_an_integer_forces_it():
  cfg = _cfg()
  assert cfg.block_size == 'auto'
  assert tile_sizes.tiles(cfg, 'flash', 8192) == (512, 512)  # CPU: measured fastest.
  assert tile_sizes.tiles(cfg.replace(block_size=64), 'flash', 8192) == (64, 64)
  assert _cfg(block_size='256').block_size == 256  # (--config.model.block_size=256)
  for bad in ('big', 0, -4):
    with pytest.raises(ValueError, match=r"model.block_size: got .*; allowed: 'auto' or a "
                                         'positive integer'):
      _cfg(block_size=bad)


@pytest.mark.parametrize('limit', [H100, A100], ids=['h100', 'a100'])
@pytest.mark.parametrize('head_dim', [64, 128, 256])
@pytest.mark.parametrize('itemsize', [2, 4], ids=['bf16', 'f32'])
def test_default_gpu_tiles_fit_shared_memory(limit, head_dim, itemsize):
  bq, bk = tile_sizes.gpu_tiles(head_dim, itemsize, limit)
  assert max(pallas_tiles.smem_bytes(bq, bk, head_dim, itemsize).values()) <= limit
  assert all(t >= 16 and not t & (t - 1) for t in (bq, bk))  # Triton: powers of two.
  # The largest that fits: doubling the query tile would not.
  assert bq == 128 or max(pallas_tiles.smem_bytes(2 * bq, bk, head_dim, itemsize).values()) > limit


def test_smem_estimate_explains_the_h200_failure():
  """The first H200 run: 128 x 128 tiles, head dim 128, bf16 refused by Triton
  (262144 bytes asked, 232448 there) while dO was float32; in bf16 they fit."""
  kb = lambda **kw: max(pallas_tiles.smem_bytes(128, 128, 128, **kw).values())  # noqa: E731
  assert kb(itemsize=2) <= H100 < kb(itemsize=4)
  assert tile_sizes.gpu_tiles(128, 2, H100) == (128, 128)
  assert tile_sizes.gpu_tiles(128, 2, A100) == (128, 64)
  assert pallas_tiles.launch(128, 128) == {'num_warps': 8, 'num_stages': 2}
  assert pallas_tiles.launch(64, 64)['num_warps'] == 4


def test_impossible_forced_pallas_tiles_are_one_line_errors(monkeypatch):
  cfg = _cfg(attention='pallas', model_dim=1024, num_heads=8, dtype='bfloat16')
  monkeypatch.setattr(pallas_tiles, 'PLATFORM', 'gpu')
  assert tile_sizes.tiles(cfg, 'pallas', 2048) == (128, 128)
  for block, why in ((512, 'shared memory'), (96, 'power-of-two')):
    with pytest.raises(ValueError, match=rf"model.block_size: got {block} for attention=pallas "
                                         rf"on gpu: .*{why}.*; allowed: 'auto' \(here 128 x 128\)"):
      tile_sizes.tiles(cfg.replace(block_size=block), 'pallas', 2048)
  monkeypatch.setattr(pallas_tiles, 'PLATFORM', 'tpu')
  assert tile_sizes.tiles(cfg, 'pallas', 2048) == (512, 512)
  with pytest.raises(ValueError, match='multiples of 128'):
    tile_sizes.tiles(cfg.replace(block_size=96), 'pallas', 2048)
  assert tile_sizes.tiles(cfg.replace(block_size=64), 'pallas', 64) == (64, 64)  # One tile.
