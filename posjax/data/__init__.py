"""Datasets as array_record files read through ``tfds.data_source`` (no
TensorFlow), and the grain pipelines that batch them.

  inputs            where an experiment's data comes from: ``config.data`` -> a source
  prepared          what every builder shares: sizes, array_record, integrity checks
  builders, build   the TFDS builders and ``python -m posjax.data.build``
  text, cache       LM text: tokenizers, ``local_text`` (embedded corpus), its cache
  train_tokenizer   ``python -m posjax.data.train_tokenizer`` (SentencePiece)
  listops, pathfinder, lra     the Long Range Arena tasks (generated or converted)
  synthetic*        length-generalisation tasks: generators, solvers, vocabulary, splits
  passkey           passkey retrieval for language models
  pipelines         grain pipelines for classification and sequences, shared pieces
  lm_pipelines      grain pipelines for language modelling

Imports nothing of posjax outside this package: the data know no model.
"""
