"""The public random walk (docs/randomwalk.md): ``propagate(cam, feat, *, radius=5, beta=8, logt=8)`` and its pieces."""
from affinitynet.ops.affinity import pair_affinity, radius_pair_affinity
from affinitynet.ops.pairs import pair_indices
from affinitynet.ops.randomwalk import (
    dense_propagate_reference,
    propagate,
    propagate_with_affinity,
    transition_weights,
)

__all__ = [
    "propagate",
    "propagate_with_affinity",
    "transition_weights",
    "pair_indices",
    "pair_affinity",
    "radius_pair_affinity",
    "dense_propagate_reference",
]
