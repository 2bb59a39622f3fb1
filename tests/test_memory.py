"""Out of memory is one line naming the size and the knobs (issue 10 item 10):
from the compiled program's memory analysis before the first step, and from an
allocation failure at run time."""
import jax
import pytest

from posjax import main
from posjax.training import memory, steps

from test_train import tiny_config


def test_a_step_that_cannot_fit_is_refused_before_it_runs(corpus, tmp_path, capsys,
                                                          monkeypatch):
  monkeypatch.setattr(memory, 'available_bytes', lambda device: 2 ** 10)
  ran = []
  real = steps.Trainer.evaluate
  monkeypatch.setattr(steps.Trainer, 'evaluate', lambda *a: ran.append(1) or real(*a))
  with pytest.raises(SystemExit) as e:
    main.run_job(tiny_config(corpus), str(tmp_path / 'run'))
  err = capsys.readouterr().err.splitlines()[-1]  # Earlier lines: the corpus build.
  assert e.value.code == 2 and 'Traceback' not in err, err
  assert err.startswith('error: memory: the train step needs ') and 'a device has 1.0 KiB' in err
  assert 'batch_size' in err and 'grad_accum_steps' in err and "model.remat='full'" in err
  assert not ran
  assert not (tmp_path / 'run').exists()  # Refused: nothing half-written.
  (tmp_path / 'mine').mkdir()  # A workdir that was there keeps what it had, and only that.
  (tmp_path / 'mine' / 'notes.txt').write_text('x')
  with pytest.raises(SystemExit):
    main.run_job(tiny_config(corpus), str(tmp_path / 'mine'))
  assert [p.name for p in (tmp_path / 'mine').iterdir()] == ['notes.txt']


def test_the_analysis_of_a_real_program_is_read():
  f = jax.jit(lambda x: (x @ x.T).sum())
  need, _ = memory.needed_bytes(f.lower(jax.numpy.ones((256, 256))).compile())
  assert need >= 256 * 256 * 4
  assert memory.available_bytes(jax.devices('cpu')[0]) > 0


def test_an_allocation_failure_at_run_time_is_one_line():
  with pytest.raises(memory.ResourceError, match=r'^memory: the train step asked for '
                     r'113.7 GiB on cpu .*allowed: a smaller batch_size'):
    with memory.translate_oom():
      raise jax.errors.JaxRuntimeError(
          'RESOURCE_EXHAUSTED: Out of memory allocating 122060252688 bytes.')
  with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
    with memory.translate_oom():
      raise jax.errors.JaxRuntimeError('INTERNAL: something else')
