"""Reliability (issue 5): a training subprocess killed with SIGKILL resumes to
bit-identical parameters; unreadable checkpoints are skipped with a warning;
every bad input is one line on stderr, exit code 2, nothing written; bf16 RoPE
and ALiBi / Kerple softmax stay exact enough at positions around 10^6."""
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from posjax import main, models, tasks
from posjax.training import loop
from posjax.training.steps import Trainer
from posjax.workdir import checkpoints, restore, run_config

from posjax.encodings import registry
from posjax.models.kernels import blockwise
from posjax.models.kernels.span import Span

from test_train import ROOT, tiny_config

# The crash tests' experiment: test_train's resume run (the two files share its
# compiled programs) with a checkpoint after every step, as a config file that the
# CLI and the in-process reference both load.
N = 4
CRASH = dict(num_train_steps=N, checkpoint_every_steps=1, eval_every_steps=N)
CONFIG_FILE = """import importlib.util

def get_config():
  spec = importlib.util.spec_from_file_location('test_train', {test_train!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.tiny_config({corpus!r}, **{overrides!r})
"""


def config_file(path, *arg):
  spec = importlib.util.spec_from_file_location('config', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*arg)


def same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def steps(workdir):
  d = checkpoints.checkpoint_dir(workdir)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def tmp_dirs(workdir):
  return [s for s in os.listdir(checkpoints.checkpoint_dir(workdir)) if 'orbax-checkpoint-tmp' in s]


# ---------------------------------------------------------------------------
# Crashes.

def _array_files(step_dir, action):
  for root, _, files in os.walk(os.path.join(step_dir, 'params')):
    for f in files:
      if os.path.basename(root) == 'd':  # OCDBT data files.
        action(os.path.join(root, f))


def _truncate_arrays(step_dir):
  _array_files(step_dir, lambda f: os.truncate(f, 10))


def test_interrupted_runs_reach_the_uninterrupted_params(corpus, tmp_path, caplog):
  """One uninterrupted run (in-process) and two interrupted ones: the CLI killed
  with SIGKILL mid-training and rerun; and a run whose latest checkpoint is
  truncated and whose next save was cut short. Both end bit-identical."""
  path = str(tmp_path / 'crash_config.py')
  with open(path, 'w') as f:
    f.write(CONFIG_FILE.format(test_train=os.path.join(ROOT, 'tests', 'test_train.py'),
                               corpus=corpus, overrides=CRASH))
  cfg, reference = config_file(path), str(tmp_path / 'uninterrupted')
  loop.train_and_evaluate(cfg, reference)
  params = restore.load_for_analysis(reference).params
  assert steps(reference) == [N - 2, N - 1, N]

  # kill -9 once the first checkpoint exists, then the same command again.
  killed = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'posjax.main', f'--config={path}', f'--workdir={killed}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')  # 8 fake devices, as in-process.
  with open(tmp_path / 'killed.log', 'w') as log:
    victim = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not steps(killed) and victim.poll() is None and time.monotonic() < deadline:
      time.sleep(0.005)
    victim.kill()  # SIGKILL: no handler, no cleanup, possibly mid-save.
    victim.wait()
  assert victim.returncode == -signal.SIGKILL, (tmp_path / 'killed.log').read_text()
  assert 1 <= max(steps(killed)) < N, steps(killed)  # Killed mid-training.
  rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr
  assert 1 <= int(rerun.stderr.split('resumed from step ')[1].split()[0]) < N, rerun.stderr
  result = restore.load_for_analysis(killed)
  assert result.step == N and not tmp_dirs(killed)
  assert result.config == run_config.load_config(reference)  # The same experiment.
  same_params(result.params, params)

  # Step N truncated, step N + 1 a partial save: resumes from N - 1 with a warning.
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(reference, damaged)
  ckpts = checkpoints.checkpoint_dir(damaged)
  _truncate_arrays(os.path.join(ckpts, str(N)))
  partial = os.path.join(ckpts, f'{N + 1}.orbax-checkpoint-tmp-1234567890')
  shutil.copytree(os.path.join(ckpts, str(N - 1)), partial)
  shutil.rmtree(os.path.join(partial, 'params'))
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(cfg, damaged)
  assert any(r.getMessage().startswith(f'checkpoint step {N} in ') for r in caplog.records)
  assert not tmp_dirs(damaged) and steps(damaged) == [N - 2, N - 1, N]
  same_params(restore.load_for_analysis(damaged).params, params)


def _enospc(*args, **kwargs):
  raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: No space left on device '
                   "[os_error_code='28']")


@pytest.mark.parametrize('fails', ['orbax_save', 'manifest'])
def test_full_disk_is_one_line_keeps_the_last_step_and_resumes(fails, corpus, tmp_path, capsys,
                                                                monkeypatch):
  """A save that fails for lack of space (a tensorstore write, or the manifest
  after it) stops the run with one line naming the step not saved and the one
  intact; nothing of the failed step stays; the same command then resumes."""
  import orbax.checkpoint as ocp
  from posjax.workdir import integrity
  cfg, workdir = tiny_config(corpus, num_train_steps=3, checkpoint_every_steps=1), str(tmp_path)
  real_save = ocp.CheckpointManager.save
  def save(self, step, *a, **k):  # Steps 1 saves; step 2 meets the full disk.
    if step == 2 and fails == 'orbax_save':
      _enospc()
    return real_save(self, step, *a, **k)
  real_manifest = integrity.write_manifest
  def manifest(step_dir):
    if step_dir.endswith(os.sep + '2') and fails == 'manifest':
      _enospc()
    return real_manifest(step_dir)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  monkeypatch.setattr(integrity, 'write_manifest', manifest)
  with pytest.raises(SystemExit) as e:
    main.run_job(cfg, workdir)
  out = capsys.readouterr().err
  err = out.strip().splitlines()[-1]
  assert e.value.code == 1 and 'Traceback' not in out
  assert err.startswith(f'error: checkpoint: step 2 was not saved in {workdir}/checkpoints '
                        '(ValueError: RESOURCE_EXHAUSTED'), err
  assert err.endswith('); step 1 is intact; allowed: free space (or fix the error) and rerun '
                      'the same command, which resumes'), err
  assert steps(workdir) == [1] and not tmp_dirs(workdir)
  monkeypatch.undo()
  main.run_job(cfg, workdir)
  assert 'resumed from step 1' in capsys.readouterr().err
  assert steps(workdir) == [1, 2, 3]


def test_restoring_beside_a_run_that_deletes_old_steps_never_fails(corpus, tmp_path, capfd):
  """``load_for_analysis`` while a run saves every step and keeps only one: a step
  deleted under the reader is skipped for the newer one (one warning line at
  most), never an error or a tensorstore traceback."""
  path = str(tmp_path / 'config.py')
  with open(path, 'w') as f:
    f.write(CONFIG_FILE.format(
        test_train=os.path.join(ROOT, 'tests', 'test_train.py'), corpus=corpus,
        overrides=dict(num_train_steps=400, checkpoint_every_steps=1, keep_checkpoints=1,
                       log_every_steps=100, eval_every_steps=1000)))
  workdir = str(tmp_path / 'run')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  writer = subprocess.Popen([sys.executable, '-m', 'posjax.main', f'--config={path}',
                             f'--workdir={workdir}'], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not steps(workdir) and writer.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    reads = []
    while writer.poll() is None and len(reads) < 30:
      reads.append(restore.load_for_analysis(workdir).step)
  finally:
    writer.kill()
    writer.communicate()
  assert len(reads) >= 10 and reads == sorted(reads), reads  # Raced a live writer.
  err = capfd.readouterr().err
  assert 'Traceback' not in err and 'Error' not in err.replace('UnreadableCheckpointError', ''), \
      err[-3000:]


@pytest.fixture(scope='module')
def saved(corpus, tmp_path_factory):
  """A workdir with steps N-2, N-1, N (no training: a 1-device initial state,
  saved with its ``step`` set to the step number) and the config."""
  cfg = tiny_config(corpus, mesh={'data': 1, 'fsdp': 1, 'tensor': 1})
  trainer = Trainer(cfg, devices=jax.devices()[:1])
  workdir = str(tmp_path_factory.mktemp('saved'))
  run_config.save_config(workdir, cfg)
  mngr, state = checkpoints.manager(workdir, cfg), trainer.init_state()
  for s in (N - 2, N - 1, N):
    checkpoints.save(mngr, s, dict(state, step=jnp.int32(s)),
                     tasks.for_config(cfg).train_iterator(), cfg)
  mngr.close()
  return cfg, trainer, workdir


DAMAGE = {
    'truncated_arrays': _truncate_arrays,
    'deleted_array_files': lambda d: _array_files(d, os.remove),
    'missing_item': lambda d: shutil.rmtree(os.path.join(d, 'data')),
    'empty_step_dir': lambda d: (shutil.rmtree(d), os.mkdir(d)),
}


@pytest.mark.parametrize('damage', DAMAGE)
def test_unreadable_latest_checkpoint_is_skipped_with_a_warning(saved, tmp_path, caplog,
                                                               damage):
  cfg, trainer, reference = saved
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  DAMAGE[damage](os.path.join(checkpoints.checkpoint_dir(workdir), str(N)))

  with caplog.at_level(logging.WARNING):  # Analysis reads only params.
    assert restore.load_for_analysis(workdir).step == N - (damage != 'missing_item')
    mngr = checkpoints.manager(workdir, cfg)
    state, step = checkpoints.restore(mngr, trainer.abstract_state,
                                      tasks.for_config(cfg).train_iterator())
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert step == N - 1 and int(state['step']) == N - 1
  assert any(w.startswith(f'checkpoint step {N} in ') and 'unreadable' in w
             and '\n' not in w for w in warnings), warnings
  # Set aside, so that the resumed run can save step N again.
  assert mngr.all_steps() == [N - 2, N - 1] and steps(workdir) == [N - 2, N - 1]
  assert os.listdir(os.path.join(workdir, checkpoints.UNREADABLE_DIR)) == [str(N)]
  mngr.close()


def test_no_readable_checkpoint_is_a_one_line_error(saved, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(saved[2], workdir)
  for s in steps(workdir):
    _truncate_arrays(os.path.join(checkpoints.checkpoint_dir(workdir), str(s)))
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=rf'^checkpoints: no step of \[{N - 2}, {N - 1}, {N}\] .*; allowed: '):
    restore.load_for_analysis(workdir)
  assert steps(workdir) == [N - 2, N - 1, N]  # Nothing moved when nothing restores.


# ---------------------------------------------------------------------------
# Bad input: one line naming the field and what is allowed, exit 2, nothing written.

def _scaling(**s):
  return ml_collections.ConfigDict({'scaling': s})


BAD_LM = {  # case: (overrides, the field the message starts with)
    'unknown_encoding': ({'model.posenc': 'rotary'}, 'model.posenc'),
    'unknown_scaling_type': ({'model.posenc_args': _scaling(type='cubic', factor=2.0)},
                             'model.posenc_args.scaling.type'),
    'scaling_factor_zero': ({'model.posenc_args': _scaling(type='linear', factor=0.0)},
                            'model.posenc_args.scaling.factor'),
    'yarn_original_max_position_negative': (
        {'model.posenc_args': _scaling(type='yarn', factor=4.0, original_max_position=-8)},
        'model.posenc_args.scaling.original_max_position'),
    'seq_len_zero': ({'seq_len': 0}, 'seq_len'),
    'max_len_negative': ({'model.max_len': -1}, 'model.max_len'),
    'eval_length_zero': ({'eval_lengths': [16, 0]}, 'eval_lengths'),
    'eval_length_not_int': ({'eval_lengths': ('128,abc',)}, 'eval_lengths'),
    'grad_clip_nan': ({'grad_clip': float('nan')}, 'grad_clip'),
    'learning_rate_inf': ({'learning_rate': float('inf')}, 'learning_rate'),
    'num_train_steps_zero': ({'num_train_steps': 0}, 'num_train_steps'),
    'learning_rate_negative': ({'learning_rate': -1e-3}, 'learning_rate'),
    'block_size_zero': ({'model.attention': 'blockwise', 'model.block_size': 0},
                        'model.block_size'),
    'num_buckets_1': ({'model.posenc': 't5', 'model.posenc_args': {'num_buckets': 1}},
                      'model.posenc_args.num_buckets'),
    'odd_head_dim_rope': ({'model.model_dim': 28}, 'model.model_dim'),
    'odd_head_dim_xpos': ({'model.posenc': 'xpos', 'model.model_dim': 28}, 'model.model_dim'),
    'rotary_dim_above_head_dim': ({'model.posenc_args': {'rotary_fraction': 1.5}},
                                  'model.posenc_args.rotary_fraction'),
    'learned_eval_above_max_len': ({'model.posenc': 'learned', 'eval_lengths': [16, 32]},
                                   'eval_lengths'),
    'heads_not_dividing_dim': ({'model.num_heads': 3}, 'model.num_heads'),
    'mesh_not_matching_devices': ({'mesh.data': 3}, 'mesh'),
    'mesh_not_dividing_devices': ({'mesh.fsdp': 3, 'mesh.data': -1}, 'mesh'),
    'batch_not_divisible': ({'batch_size': 12}, 'batch_size'),
    'missing_data_path': ({'data.path': '/nonexistent/*.txt'}, 'data.path'),
}


def _assert_refused(capsys, workdir, config, field, allowed='; allowed: '):
  with pytest.raises(SystemExit) as e:
    main.run_job(config, workdir)
  # A first read of the corpus may print its one cache-build line before the error.
  err = ''.join(l for l in capsys.readouterr().err.splitlines(True)
                if not l.startswith('local_text: '))
  assert e.value.code == 2, err
  assert err.count('\n') == 1 and 'Traceback' not in err, err
  assert err.startswith(f'error: {field}: ') and allowed in err, err
  return err


@pytest.mark.parametrize('case', BAD_LM)
def test_bad_config_is_one_line_exit_2_writing_nothing(case, corpus, tmp_path, capsys):
  overrides, field = BAD_LM[case]
  config = tiny_config(corpus, **overrides)
  _assert_refused(capsys, str(tmp_path / 'run'), config, field)
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('data_dir,allowed', [
    ('', '; allowed: '),
    ('missing', '; allowed: a data_dir where it was built (python -m posjax.data.build '
                'reverse_string '),
])
def test_missing_dataset_is_one_line_exit_2(data_dir, allowed, tmp_path, capsys):
  config = config_file(os.path.join(ROOT, 'configs', 'synthetic.py'),
                       'task=reverse_string,runlocal')
  config.data.data_dir = str(tmp_path / data_dir) if data_dir else ''
  _assert_refused(capsys, str(tmp_path / 'run'), config, 'data.data_dir', allowed)
  assert not (tmp_path / 'run').exists()


def test_eval_length_longer_than_every_document_is_refused_before_writing(corpus, tmp_path,
                                                                           capsys):
  config = tiny_config(corpus, eval_lengths=[10**6])
  _assert_refused(capsys, str(tmp_path / 'run'), config, 'eval_lengths')
  assert not (tmp_path / 'run').exists()


def test_incompatible_workdir_is_refused_naming_fields(corpus, tmp_path, capsys):
  workdir = tmp_path / 'run'
  os.makedirs(workdir / 'checkpoints' / '3')
  run_config.save_config(str(workdir), tiny_config(corpus, **{'model.posenc': 'alibi'}))
  before = {p: os.path.getmtime(p) for p in workdir.rglob('*')}
  err = _assert_refused(capsys, str(workdir), tiny_config(corpus), 'workdir')
  assert "differing fields: model.posenc ('alibi' -> 'rope')" in err, err
  assert {p: os.path.getmtime(p) for p in workdir.rglob('*')} == before


FLAG_MISTAKES = {  # argv after --workdir: the flag the message starts with
    'unknown_flag': (['--config=configs/lm.py', '--bogus=1'], '--bogus'),
    'unknown_config_field': (['--config=configs/lm.py', '--config.model.posencc=rope'],
                             '--config.model.posencc'),
    'bad_value_type': (['--config=configs/lm.py', '--config.num_train_steps=abc'],
                       '--config.num_train_steps'),
    'bad_config_argument': (['--config=configs/lm.py:size=huge'], '--config'),
    'missing_config': ([], '--config'),
}


@pytest.mark.parametrize('case', FLAG_MISTAKES)
def test_command_line_mistake_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
  argv, flag = FLAG_MISTAKES[case]
  monkeypatch.chdir(ROOT)
  flags.FLAGS.unparse_flags()
  try:
    flags.mark_flags_as_required(['config'])
    with pytest.raises(SystemExit) as e:
      main.parse_flags(['posjax', f'--workdir={tmp_path / "run"}', *argv])
  finally:
    flags.FLAGS.unparse_flags()
    flags.FLAGS['config'].validators.clear()
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1, err
  assert err.startswith(f'error: {flag}: ') and '; allowed: ' in err, err


@pytest.mark.parametrize('argv,message', [
    (['--config.model.posencc=rope'], "error: --config.model.posencc: no such config field"),
    (['--config.mesh.data=3'], 'error: mesh: '),
])
def test_cli_refuses_with_one_line_and_exit_2(tmp_path, argv, message):
  """The real entry point: stderr is exactly one line, no traceback, no workdir."""
  workdir = tmp_path / 'run'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'posjax.main', '--config=configs/lm.py:runlocal', *argv,
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count('\n') == 1 and proc.stderr.startswith(message), proc.stderr
  assert '; allowed: ' in proc.stderr and not workdir.exists()


# ---------------------------------------------------------------------------
# Numerics at long positions.

def test_bf16_rope_decoder_matches_float32_at_a_million():
  """Same params, bf16 compute at positions 10^6 and 2^23 vs the float32 model
  at 0..L (RoPE is relative, so that is the exact reference)."""
  cfg = models.ModelConfig(kind='decoder', vocab_size=64, num_layers=2, num_heads=2,
                           model_dim=64, mlp_dim=128, max_len=64, posenc='rope')
  f32, bf16 = models.build(cfg), models.build(cfg.replace(dtype='bfloat16'))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 32)), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(f32.init, jax.random.key(0), tokens)['params'])
  rng = np.random.default_rng(0)  # Random params without an init compile.
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                        shapes)
  apply = jax.jit(lambda m, p, pos: m.apply({'params': p}, tokens, pos), static_argnums=0)
  near = jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), tokens.shape)
  ref = np.asarray(apply(f32, params, near), np.float64)
  for offset in (1_000_000, 2 ** 23):
    far32 = np.asarray(apply(f32, params, near + offset), np.float64)
    far16 = apply(bf16, params, near + offset)
    assert far16.dtype == jnp.float32 and np.isfinite(far16).all()
    # float32 angles split exactly: float32 agrees to float32 rounding (plain
    # float32 position * frequency is off by 6e-3 here at 10^6).
    assert np.abs(far32 - ref).max() <= 1e-4, offset
    # bf16 within bf16 tolerance (plain float32 angles: 0.1 at 2^23).
    assert np.abs(np.asarray(far16, np.float64) - ref).max() <= 2 ** -7 * np.abs(ref).max()


@pytest.mark.parametrize('attention_path', ['dense', 'blockwise'])
@pytest.mark.parametrize('posenc', ['alibi', 'kerple_log', 'kerple_power'])
def test_long_distance_bias_softmax_stays_finite_and_attends(posenc, attention_path):
  """Rows whose positions jump by 10^6 (1.6 * 10^7 in the second row): queries
  after the jump see keys 10^6+ away, biases of -10^5 .. -10^14. The softmax must
  neither overflow (NaN / Inf) nor underflow (an all-zero row), and must match a
  float64 softmax of the same logits in the dense and the blockwise path."""
  B, S, H, K = 2, 16, 4, 8
  enc = registry.make(posenc, {}, num_heads=H, head_dim=K, model_dim=H * K, max_len=512,
                      causal=True)
  jump = np.array([[1_000_000], [16_000_000]]) * (np.arange(S) >= S // 2)
  pos = jnp.asarray(np.arange(S) + jump, jnp.int32)
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(B, S, H, K)), jnp.float32) for _ in range(2))
  v = jnp.broadcast_to(jnp.eye(S)[None, :, None, :], (B, S, H, S))  # out[..., j] = p_j.
  idx, seg = jnp.broadcast_to(jnp.arange(S), (B, S)), jnp.ones((B, S), jnp.int32)
  block = 4 if attention_path == 'blockwise' else None

  def run(variables, q, k):
    e = enc.bind(variables)
    out, _ = blockwise.attend(e, q, k, v, pos, pos, idx, idx, seg, seg, span=Span(True),
                              block_size=block, scale=K ** -0.5)
    return out, e.bias(q, k, pos, pos, None, None)[0]

  @jax.jit
  def outputs(q, k):
    return run(enc.init(jax.random.key(0), q, k, pos, pos, None, None, method='bias'), q, k)

  p, bias = outputs(q, k)
  p = np.asarray(p, np.float64).transpose(0, 2, 1, 3)  # [B, H, L, S]
  bias = np.asarray(bias, np.float64)
  far, near = bias[:, :, S // 2:, :S // 2], bias[:, :, S // 2:, S // 2:]
  assert np.isfinite(bias).all()  # Far keys: finite and penalised more than near ones.
  assert (far.max(axis=(2, 3)) < near.min(axis=(2, 3))).all()
  logits = np.einsum('blhk,bshk->bhls', np.asarray(q, np.float64), np.asarray(k, np.float64))
  logits = np.where(np.tri(S, dtype=bool), logits * K ** -0.5 + bias, -np.inf)
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  assert np.isfinite(p).all()
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)  # No all-zero row.
  top = np.take_along_axis(p, want.argmax(-1)[..., None], -1)
  assert (top >= 1 / S).all()  # Each row's most likely key is attended.
  np.testing.assert_allclose(p, want, atol=1e-5)
