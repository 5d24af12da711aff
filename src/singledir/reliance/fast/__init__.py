"""The fx fast path: cached prefix, incremental linear consumers, level walks on cache-sized example chunks.

Offers :class:`FastEvaluator` (``method="fast"``) and :class:`TraceFailed`. Parts, each with the evidence
for its speed tricks beside its code:

- :mod:`.graph` -- trace with a marker after each analysed layer; the prefix / rest split; linear chains.
- :mod:`.evaluator` -- :class:`FastEvaluator`: probing (does the traced graph reproduce the model, which
  layout), chunk sizing, the prefix cache, running the rest node by node, and the evaluator interface.
- :mod:`.walk` -- the level walk (:class:`~.walk.LevelWalk`) and single-unit ablations
  (:class:`~.walk.SingleAblation`): incremental updates of a layer's linear consumer, row-sparse steps.
- :mod:`.layout` -- column-major 2-D activations, walk-owned buffers, folded clamps, anchored float32
  accumulators.
- :mod:`.scoring` -- per-example and batched scoring of logits.
- :mod:`.noise` -- noise curves: root linear consumers updated by one scaled term per noise scale; the
  readout of a noisy last layer as ``W h`` plus a per-scale term (one GEMM per repeat).
- :mod:`.chainwalk` -- :class:`~.chainwalk.DenseChain`: level walks of dense ReLU chains (MLP rests) with
  the per-level bookkeeping done once per chunk; readouts written straight into the score queue.
- :mod:`.singles` -- single-unit ablations of dense ReLU chains, the changed rows of 8 units per batch of ops.
- :mod:`.pool` -- example chunks walked by a pool of threads, as many as the caller's torch threads
  (never changed: no process-wide thread setting is touched).
"""

from singledir.reliance.fast.evaluator import FastEvaluator
from singledir.reliance.fast.graph import TraceFailed

__all__ = ["FastEvaluator", "TraceFailed"]
