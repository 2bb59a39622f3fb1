"""The attention implementations, one module each, under the dispatcher
``posjax.models.attention`` that chooses among them.

  blocks        the shared block math: masks, the hook calls, the online softmax, tiles
  blockwise     ``dense`` (the reference) and ``blockwise`` (scan over key blocks)
  stick_breaking  the stick-breaking normalizer's block (``model.normalizer``)
  flash         queries and keys tiled, empty tiles skipped, a custom VJP
  pallas        flash as Pallas kernels (Triton / Mosaic), the bias computed inside
  pallas_tiles  what the Pallas kernels share: tile walks, block specs, the bias as
                operands, their shared-memory estimate and launch parameters
  tile_sizes    ``model.block_size``: 'auto' per implementation and platform
  vendor        cuDNN and splash, for encodings with no bias or value hook

Every implementation imports ``blocks``; ``pallas`` builds on ``flash``'s custom
VJP. None imports the dispatcher; all import ``posjax.encodings`` only.
"""
