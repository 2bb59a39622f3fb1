"""Config arguments and the command line (posjax.config_lib, posjax.main): typed
``file.py:key=value`` arguments, light config files, every field settable by
``--config.<path>=<value>`` (tuples and posenc_args keys included), and one-line
exit-2 errors."""
import importlib.util
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from posjax import config_lib, main, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py'))
HEAVY = ('optax', 'orbax', 'grain', 'tensorflow', 'tensorflow_datasets')


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


# ---------------------------------------------------------------------------
# parse_arg: typed by the defaults.

def test_false_means_false_in_a_config_argument():
  c = _module('synthetic.py').get_config('task=reverse_string,randomized=False,runlocal=False')
  assert c.model.randomized_positions is False
  assert c.num_train_steps == 100_000 and c.model.num_layers == 5  # Not runlocal.
  c = _module('synthetic.py').get_config('randomized=yes,runlocal')
  assert c.model.randomized_positions is True and c.num_train_steps == 60


@pytest.mark.parametrize('text,value', [
    ('true', True), ('True', True), ('YES', True), ('1', True),
    ('false', False), ('FALSE', False), ('No', False), ('0', False)])
def test_bool_spellings(text, value):
  assert config_lib.parse_arg(f'runlocal={text}', runlocal=not value).runlocal is value


def test_bare_key_is_true_and_values_take_the_defaults_types():
  arg = config_lib.parse_arg(' runlocal , res=128,lr=0.5,posenc=alibi', runlocal=False,
                             res=32, lr=1.0, posenc='rope')
  assert arg.to_dict() == {'runlocal': True, 'res': 128, 'lr': 0.5, 'posenc': 'alibi'}
  assert type(arg.res) is int and type(arg.lr) is float
  assert config_lib.parse_arg('', res=32).res == 32


@pytest.mark.parametrize('arg,message', [
    ('res=abc', "^res: got 'abc'; allowed: an int$"),
    ('res=1.5', "^res: got '1.5'; allowed: an int$"),
    ('runlocal=maybe', "^runlocal: got 'maybe'; allowed: true, false, 1, 0, yes or no$"),
    ('res', '^res: got no value; allowed: res=<an int>$'),
    ('sizee=small', '^sizee: unknown config argument; allowed: res, runlocal$')])
def test_bad_config_argument_is_one_line(arg, message):
  with pytest.raises(ValueError, match=message):
    config_lib.parse_arg(arg, res=32, runlocal=False)


def test_config_file_refuses_a_typo_naming_the_allowed_keys():
  with pytest.raises(ValueError, match='^sizee: unknown config argument; allowed: posenc, '
                                       'size, arch, window, runlocal$'):
    _module('lm.py').get_config('sizee=small')
  assert _module('lra_pathfinder.py').get_config('res=128').seq_len == 128 * 128


def test_lra_cls_token_rides_on_top_of_the_task_length():
  # LRA's encoder adds its CLS token beyond max_len (max_len += 1), so every one of
  # CIFAR's 1024 pixels reaches the model (1023 did, with the CLS counted in 1024).
  from posjax.data import pipelines
  image = _module('lra_image.py').get_config('')
  assert image.seq_len == image.model.max_len == 1024 + 1
  pixels = np.arange(1, 1025)
  row = pipelines._row(pixels, image.seq_len, cls_id=257)
  assert row[0] == 257 and (row[1:] == pixels).all()
  assert _module('lra_text.py').get_config('').seq_len == 4000 + 1  # CLS pooling
  assert _module('lra_pathfinder.py').get_config('').seq_len == 32 * 32  # mean pooling
  assert _module('lra_image.py').get_config('runlocal').seq_len == 128


def test_config_files_do_not_import_the_trainer_or_data_stack():
  """Every configs/*.py loads, builds two configs and its sweep in a fresh
  process without optax, orbax, grain or TFDS."""
  script = f"""
import importlib.util, sys
for name in {CONFIGS!r}:
  spec = importlib.util.spec_from_file_location(name, 'configs/' + name)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.get_config(''), mod.get_config('runlocal,posenc=alibi')
  assert mod.sweep(), name
print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))
"""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == '[]', proc.stdout
  assert len(CONFIGS) >= 7


# ---------------------------------------------------------------------------
# Overrides of any field: config_lib.override / apply_overrides.

def test_overrides_are_typed_by_the_field():
  c = _module('lm.py').get_config('runlocal')
  c.lock()
  config_lib.apply_overrides(c, {
      'num_train_steps': '7', 'learning_rate': '3e-4', 'model.tied_embedding': 'no',
      'eval_lengths': '128,256', 'data.path': '/tmp/*.txt',
      'model.posenc_args.rotary_fraction': '0.5', 'model.posenc_args.scaling.factor': '4',
      'model.posenc_args.scaling.type': 'linear', 'mesh.data': 2})
  assert (c.num_train_steps, c.learning_rate, c.model.tied_embedding) == (7, 3e-4, False)
  assert c.eval_lengths == (128, 256) and c.data.path == '/tmp/*.txt' and c.mesh.data == 2
  assert c.model.posenc_args.to_dict() == {
      'rotary_fraction': 0.5, 'scaling': {'factor': 4, 'type': 'linear'}}


def test_posenc_args_are_typed_by_the_final_encoding():
  """Keys below posenc_args apply after ``model.posenc``, typed by its fields."""
  c = config_lib.apply_overrides(_module('lm.py').get_config('runlocal'), {
      'model.posenc_args.scale_base': '256', 'model.posenc': 'xpos',
      'model.posenc_args.center': '3'})
  assert c.model.posenc_args.to_dict() == {'scale_base': 256.0, 'center': 3}
  assert type(c.model.posenc_args.scale_base) is float


@pytest.mark.parametrize('path,value,message', [
    ('num_train_step', '7', '^num_train_step: no such config field; allowed: adam_b1, '),
    ('model.posenc_arg.base', '7', '^model.posenc_arg: no such config field; allowed: '),
    ('num_train_steps', 'abc', "^num_train_steps: got 'abc'; allowed: an int$"),
    ('num_train_steps', 1.5, '^num_train_steps: got 1.5; allowed: an int$'),
    ('seq_len.x', '1', '^seq_len: got 128, not a dict; allowed: '),
    ('model.posenc_args.base', 'abc', "^model.posenc_args.base: got 'abc'; allowed: a float$")])
def test_bad_override_is_one_line(path, value, message):
  c = _module('lm.py').get_config('runlocal')
  c.lock()
  with pytest.raises(ValueError, match=message):
    config_lib.override(c, path, value)


# ---------------------------------------------------------------------------
# The command line (main.parse_flags in-process; a few real subprocesses).

@pytest.fixture
def parse(capsys):
  """``parse(*argv)`` -> the config as ``posjax.main`` parses it."""
  def parse(*argv):
    flags.FLAGS.unparse_flags()
    rest = main.parse_flags(['posjax', f'--config={ROOT}/configs/lm.py:runlocal', *argv])
    assert rest == ['posjax']
    return flags.FLAGS['config'].value
  yield parse
  flags.FLAGS.unparse_flags()


def test_command_line_sets_tuples_and_posenc_args(parse):
  c = parse('--config.eval_lengths=128,256,512,1024', '--config.num_train_steps=7',
            "--config.logical_axis_rules=(('batch', 'data'), ('embed', None))",
            '--config.model.posenc_args.base=500000',
            '--config.model.posenc_args.scaling.type=yarn',
            '--config.model.posenc_args.scaling.factor=4',
            '--config.model.posenc_args.scaling.original_max_position=512')
  assert c.eval_lengths == (128, 256, 512, 1024) and c.num_train_steps == 7
  assert c.logical_axis_rules == (('batch', 'data'), ('embed', None))
  rope = models.ModelConfig.from_config(c.model).make_encoding()
  assert rope.base == 500000.0 and type(rope.base) is float
  assert rope.scaling == {'type': 'yarn', 'factor': 4, 'original_max_position': 512}
  assert flags.FLAGS['config'].value is c


def test_command_line_posenc_args_follow_the_encoding_flag(parse):
  c = parse('--config.model.posenc_args.scale_base=256', '--config.model.posenc=xpos')
  xpos = models.ModelConfig.from_config(c.model).make_encoding()
  assert type(xpos).__name__ == 'XPos' and xpos.scale_base == 256.0


def test_command_line_bad_posenc_value_is_one_line_exit_2(parse, capsys):
  with pytest.raises(SystemExit) as e:
    parse('--config.model.posenc_args.base=abc')
  assert e.value.code == 2
  assert capsys.readouterr().err == ("error: --config.model.posenc_args.base: got 'abc'; "
                                     'allowed: a float\n')


def test_unknown_posenc_arg_is_one_line_exit_2_writing_nothing(parse, capsys, tmp_path):
  config = parse('--config.model.posenc_args.bse=5')
  with pytest.raises(SystemExit) as e:
    main.run_job(config, str(tmp_path / 'run'))
  err = capsys.readouterr().err
  assert e.value.code == 2 and not (tmp_path / 'run').exists()
  assert err.startswith("error: model.posenc_args: unknown field(s) bse for 'rope'; "
                        'allowed: base, ') and err.count('\n') == 1, err


@pytest.mark.parametrize('argv,message', [
    (['--config=configs/lm.py:sizee=small'],
     'error: --config: sizee: unknown config argument; allowed: posenc, size, arch, window, '
     'runlocal\n'),
    (['--config=configs/lm.py:runlocal', '--config.model.posenc_args.base=-1'],
     'error: model.posenc_args.base: got -1.0; allowed: ')])
def test_cli_config_mistake_is_one_line_exit_2(argv, message, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'posjax.main', *argv,
                         f'--workdir={tmp_path / "run"}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert proc.stderr.startswith(message), proc.stderr
  assert not (tmp_path / 'run').exists()
