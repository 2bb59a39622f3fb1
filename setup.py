"""posjax: positional encodings for transformers, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name='posjax',
    version='0.1.0',
    description='Every family of positional encoding for transformers, in JAX/Flax, '
                'with a sharded training loop and experiment configs.',
    python_requires='>=3.11',
    packages=find_packages(include=['posjax', 'posjax.*']),
    install_requires=[
        'jax>=0.10.2',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.8',
        'tensorflow-datasets>=4.9.10',  # TF-free: array_record + tfds.data_source.
        'array-record>=0.8.6',
        'importlib_resources',  # tfds builders need it (an etils[epath] extra).
        'grain>=0.2.18',
        'ml-collections>=1.1.0',
        'absl-py>=2.1',
        'numpy>=2.0',
        'tensorboardX>=2.6',  # TensorBoard event files without TensorFlow.
        'sentencepiece>=0.2',  # Optional LM tokenizer (data.tokenizer=<model>).
        'submitit>=1.5.4',  # experiments --launcher=slurm (job arrays).
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'matplotlib>=3.9', 'nbclient>=0.10',
                 'nbformat>=5.10', 'ipykernel>=6.29'],
        'notebooks': ['matplotlib>=3.9', 'jupyter', 'nbclient>=0.10', 'nbformat>=5.10',
                      'ipykernel>=6.29'],
    },
    entry_points={'console_scripts': ['posjax=posjax.main:run']},
)
