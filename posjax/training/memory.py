"""Out-of-memory as one line: checked from the compiled program before the
first step, and caught at run time (RESOURCE_EXHAUSTED).

``compile_checked(jitted, *args)`` compiles the step and compares XLA's memory
analysis (arguments + outputs + temporaries - donated aliases, per device) with
what the device offers (its ``bytes_limit``; on the CPU, host memory shared by
the local devices); ``translate_oom()`` turns an allocation failure into the
same ``ResourceError``, naming the size asked for and the knobs that reduce it.
"""
from __future__ import annotations

import contextlib
import os
import re

import jax

KNOBS = ('allowed: a smaller batch_size (with grad_accum_steps to keep the global batch), '
         "model.attention='blockwise', model.remat='full', a larger mesh data or fsdp axis, "
         'or a shorter seq_len')


class ResourceError(RuntimeError):
  """A step that does not fit in the memory of its devices."""


def _gib(n: float) -> str:
  """``'113.7 GiB'``, or MiB / KiB for small sizes."""
  for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20)):
    if n >= scale / 10:
      return f'{n / scale:.1f} {unit}'
  return f'{n / 2 ** 10:.1f} KiB'


def available_bytes(device) -> int | None:
  """Memory one device of this kind may use (None where unknown)."""
  stats = device.memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  if device.platform == 'cpu':
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return total // max(len(jax.local_devices(backend='cpu')), 1)
  return None


def needed_bytes(compiled) -> tuple[int, int] | None:
  """(total, temporaries) per device from XLA's memory analysis, if reported."""
  ma = compiled.memory_analysis()
  if ma is None:
    return None
  total = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
           + ma.temp_size_in_bytes + ma.generated_code_size_in_bytes)
  return total, ma.temp_size_in_bytes


def compile_checked(jitted, *args):
  """``jitted.lower(*args).compile()``, or ResourceError if it cannot fit."""
  with translate_oom():
    compiled = jitted.lower(*args).compile()
  need = needed_bytes(compiled)
  avail = available_bytes(jax.local_devices()[0])
  if need is not None and avail is not None and need[0] > avail:
    raise ResourceError(f'memory: the train step needs {_gib(need[0])} per device '
                        f'({_gib(need[1])} of temporaries) and a device has {_gib(avail)}; '
                        f'{KNOBS}')
  return compiled


@contextlib.contextmanager
def translate_oom():
  """Re-raises an XLA allocation failure as a one-line ResourceError."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'Out of memory' not in text:
      raise
    m = re.search(r'allocating (\d+) bytes', text)
    asked = f'asked for {_gib(int(m.group(1)))}' if m else 'ran out of memory'
    raise ResourceError(f'memory: the train step {asked} on {jax.local_devices()[0].platform} '
                        f'and the device does not have it; {KNOBS}') from None
