"""Test setup: 8 fake CPU devices (before jax is imported) and a ``slow`` marker."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()

# Identical programs (a resumed run, a second trainer) compile once per session.
import tempfile  # noqa: E402
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='posjax_jit_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# local_text builds go to a per-session cache, not ~/.cache/posjax.
os.environ.setdefault('POSJAX_CACHE_DIR', tempfile.mkdtemp(prefix='posjax_cache_'))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """Tiny builds of the generated TFDS datasets the tests read (once per worker)."""
  from posjax.data import builders
  d = str(tmp_path_factory.mktemp('tfds'))
  for name in ('listops', 'pathfinder32', 'reverse_string'):
    builders.build(name, data_dir=d, size='tiny', seed=0)
  return d


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
  """A small deterministic text corpus (hermetic and fast to list)."""
  d = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  words = ['def', 'return', 'self', 'import', 'class', 'x', 'y', '=', '+', '(', ')', ':']
  for i in range(40):
    n = int(rng.integers(20, 200))
    (d / f'doc{i:02d}.txt').write_text(' '.join(rng.choice(words, n)) + '\n')
  return str(d)


def pytest_addoption(parser):
  parser.addoption('--runslow', action='store_true', default=False,
                   help='also run tests marked slow')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: slow test, run only with --runslow')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--runslow'):
    return
  skip = pytest.mark.skip(reason='slow: pass --runslow to run')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)
