"""``lm``: next-token prediction over packed text, evaluated at every
``eval_lengths`` entry (longer than training = extrapolation); perplexity and
bits per byte (bits per token with a SentencePiece tokenizer); with
``passkey_lengths``, also passkey retrieval (``posjax.data.passkey``) at every
length x ``passkey_depths``: ``eval/sequence_accuracy@passkey_<length>_<depth %>``."""
from __future__ import annotations

import functools
import math

from posjax.data import inputs, lm_pipelines, passkey, text
from posjax.tasks.base import Task


class LanguageModelling(Task):
  name = 'lm'
  model_kind = 'decoder'

  @property
  def unit(self) -> str:
    """What a token is: ``bits_per_<unit>``."""
    return 'byte' if self.config.data.get('tokenizer', 'bytes') in ('', 'bytes') else 'token'

  @functools.cached_property
  def tokenizer(self):
    return text.tokenizer(self.config.data.get('tokenizer', 'bytes'))

  def check(self, mcfg) -> None:
    c = self.config
    lengths = c.get('eval_lengths') or ()
    if not lengths or any(not isinstance(n, int) or isinstance(n, bool) or n <= 0
                          for n in lengths):
      raise ValueError(f'eval_lengths: got {lengths!r}; allowed: a non-empty list of '
                       'positive integers, e.g. --config.eval_lengths=128,256,512')
    keys = tuple(c.get('passkey_lengths') or ())
    if any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in keys):
      raise ValueError(f'passkey_lengths: got {keys!r}; allowed: positive integers, e.g. '
                       '--config.passkey_lengths=256,512')
    depths = tuple(c.get('passkey_depths') or ())
    if any(not 0 <= d <= 1 for d in depths):
      raise ValueError(f'passkey_depths: got {depths!r}; allowed: fractions in [0, 1]')
    for field, ns in (('eval_lengths', lengths), ('passkey_lengths', keys)):
      if ns and mcfg.encoding_class.bounded_by_max_len and max(ns) > mcfg.max_len:
        raise ValueError(f'{field}: got {max(ns)} with posenc={mcfg.posenc!r}; '
                         f'allowed: <= model.max_len={mcfg.max_len}')
    self.check_vocab(mcfg, self.tokenizer.vocab_size)
    src = self.source  # Opens (or builds, for local_text) the dataset once.
    key, split = inputs.text_key(c), inputs.eval_split(c, src)
    if 'train' not in src or split not in src:
      raise ValueError(f'data.eval_split: {c.data.name} has splits {", ".join(src)}; '
                       'allowed: a dataset with a train split and the eval split')
    features = src['train'].dataset_info.features
    if key not in features:
      raise ValueError(f'data.text_key: got {key!r}; allowed: {", ".join(features.keys())} '
                       f'(features of {c.data.name})')

  def _tokenize(self):
    tok, key = self.tokenizer, inputs.text_key(self.config)
    return lambda ex: tok.encode(ex[key])

  def train_iterator(self, process_index=0, process_count=1):
    c = self.config
    return lm_pipelines.lm_train(
        self.source['train'], tokenize=self._tokenize(), seq_len=c.seq_len, seed=c.seed,
        shuffle_window=c.data.get('shuffle_window', 1024),
        **self.shard(c.batch_size, process_index, process_count))

  def eval_sets(self, process_index=0, process_count=1):
    c = self.config
    split = self.source[inputs.eval_split(c, self.source)]
    lengths = [int(n) for n in c.eval_lengths]
    # Every length scores the same tokens when the lengths divide the longest.
    span = max(lengths) if all(max(lengths) % n == 0 for n in lengths) else None
    out = {n: lm_pipelines.lm_eval(
        split, tokenize=self._tokenize(), length=n, num_batches=c.num_eval_batches,
        span=span, **self.shard(c.eval_batch_size, process_index, process_count))
           for n in lengths}
    for n in c.get('passkey_lengths') or ():  # Passkey retrieval by length and depth.
      for depth in c.get('passkey_depths') or passkey.DEPTHS:
        out[passkey.set_name(n, depth)] = passkey.batches(
            self.tokenizer.encode, length=int(n), depth=float(depth), seed=c.seed,
            num_examples=c.get('passkey_examples', 32),
            **self.shard(c.eval_batch_size, process_index, process_count))
    return out

  def summarize(self, sums, suffix=''):
    out = super().summarize(sums, suffix)
    loss = out[f'loss{suffix}']
    out[f'perplexity{suffix}'] = math.exp(min(loss, 50.0))
    out[f'bits_per_{self.unit}{suffix}'] = loss / math.log(2)
    return out
