"""posjax.data.passkey and its LM eval sets: rows of exactly the length, the key
where the depth says, only the answer scored, exact-match sequence accuracy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.data import passkey, text
from posjax.tasks.base import Task

TOKENIZER = text.tokenizer('bytes')
ENCODE = TOKENIZER.encode


def _decode(tokens):
  return TOKENIZER.decode(tokens).decode()


@pytest.mark.parametrize('depth', [0.0, 0.5, 1.0])
def test_example_hides_the_key_at_its_depth_and_scores_only_the_answer(depth):
  row = passkey.example(ENCODE, 256, depth, 71432)
  assert {k: v.shape for k, v in row.items()} == {k: (256,) for k in row}
  whole = _decode(np.concatenate([row['inputs'][:1], row['targets']]))
  assert whole.endswith(passkey.QUESTION + '71432') and len(whole) == 257
  assert _decode(row['targets'][row['weights'] > 0]) == '71432'  # Only the answer.
  needle = whole.index(passkey.NEEDLE.format(key=71432))
  filler = 257 - len(passkey.NEEDLE.format(key=71432)) - len(passkey.QUESTION) - 5
  assert needle == round(depth * filler)  # 0: first; 1: just before the question.


def test_too_short_a_length_names_the_field():
  with pytest.raises(ValueError, match='passkey_lengths: got 64; allowed: >= 10[0-9]'):
    passkey.example(ENCODE, 64, 0.5, 12345)


def test_batches_share_keys_across_depths_and_pad_every_process_alike():
  a = passkey.batches(ENCODE, length=128, depth=0.0, num_examples=5, batch_size=2, seed=0)
  b = passkey.batches(ENCODE, length=128, depth=1.0, num_examples=5, batch_size=2, seed=0)
  answers = lambda bs: [_decode(r[w > 0]) for x in bs  # noqa: E731
                        for r, w, e in zip(x['targets'], x['weights'], x['example_weight'])
                        if e > 0]
  assert answers(a) == answers(b) and len(set(answers(a))) == 5
  shards = [passkey.batches(ENCODE, length=128, depth=0.5, num_examples=5, batch_size=2,
                            seed=0, process_index=p, process_count=2) for p in range(2)]
  assert [len(s) for s in shards] == [2, 2]  # 3 and 2 real rows, padded to 2 batches.
  assert sum(x['example_weight'].sum() for s in shards for x in s) == 5
  pad = a[-1]['example_weight'] == 0
  assert (a[-1]['weights'][pad] == 0).all()


def test_sequence_accuracy_is_exact_match_of_every_answer_token():
  batch = passkey.batches(ENCODE, length=128, depth=0.5, num_examples=4, batch_size=4,
                          seed=1)[0]
  batch = jax.tree.map(jnp.asarray, batch)
  logits = jax.nn.one_hot(batch['targets'], 260) * 10.0
  task = Task(None)
  assert task.summarize(task.sums(logits, batch))['sequence_accuracy'] == 1.0
  answer = np.argwhere(np.asarray(batch['weights'][2]) > 0)[-1, 0]
  wrong = logits.at[2, answer].set(jnp.roll(logits[2, answer], 1))  # One digit of row 2.
  out = task.summarize(task.sums(wrong, batch))
  assert out['sequence_accuracy'] == 0.75 and out['accuracy'] == 19 / 20
