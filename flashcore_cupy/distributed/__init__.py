"""Context parallelism: ring attention across ranks (issue 27), built in layers.

- `sharding`: a sequence's chunks per rank (zigzag for causal runs: rank i holds chunks i and
  2N - 1 - i, so every rank does the same causal work), shard / unshard.
- `schedule`: the ring's order (at step s rank r holds rank (r - s) mod N's K/V, and in the
  backward their dK/dV accumulators) and each (query chunk, key chunk) block's kind: full,
  masked (the causal diagonal, a window's edge) or skipped.
- `rank`: one rank's work on either backend (`RankForward` / `RankBackward`): each step's
  blocks as attention calls with the kernels' own masks (`schedule.block_call`), the partials
  merged by their LSE, dQ local and the held shard's dK/dV accumulated.
- `simulate`: the whole ring on N virtual ranks in float64 NumPy, `rank`'s code on the
  reference: the CPU tests hold it to the reference on the whole sequence.

- `ring`: `ring_attention` / `ring_attention_backward` on the GPUs of a cupyx.distributed NCCL
  group: `rank`'s code on the kernels (`attention`, `attention_backward`, `merge_states`), the
  next shard's transfer on a stream of its own.
- `launch`: `python -m flashcore_cupy.distributed.launch --nproc N script.py`, a process per
  GPU with the rank, world size and cupyx.distributed's rendezvous address in its environment.
"""

from .ring import ring_attention, ring_attention_backward
from .schedule import Block, block_kind, ring_source, rank_blocks
from .sharding import chunk_spans, shard, unshard

__all__ = ["Block", "block_kind", "ring_source", "rank_blocks", "chunk_spans", "shard", "unshard",
           "ring_attention", "ring_attention_backward"]
