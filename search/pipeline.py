"""From a design to what the simulator runs: compute and transfer stages along the route.

Node j of the route runs blocks [p_j, p_{j+1}) (plus the decoder of the compressing cut it
receives and the encoder of the one it sends); hop j carries what the split at p_{j+1} sends: the
raw input at the scenario's bits per element for position 0, the compressed activation, or 32-bit
floats. A node that runs no block adds no compute stage; it still forwards. A request is done
where its last block runs: the nodes after it on the route receive nothing (so "all on the
device" sends nothing at all). With ``return_result`` the logits (32-bit floats) then travel back
along the route to the device.

Split learning (the scenario's ``mode: training``, :func:`design_pipeline` with
``backward_flops_factor``): after the forward stages, the backward pass starts where the last
block ran and visits, in reverse, only the nodes that hold blocks: each runs ``factor`` x its
forward FLOPs (our choice, about 2: gradients with respect to inputs and to weights), and the
gradient of what a hop carried forward travels back over the same hops in 32-bit floats
(:meth:`models.profile.ModelProfile.gradient_bits`), through nodes that only forwarded; nothing
goes back to a node that holds no block (a split at position 0), and no result returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.profile import ModelProfile
from sim.workload import Compute, Phase, Stage, Transfer

from .design import Design

__all__ = ["SegmentCost", "design_pipeline", "segment_costs"]


@dataclass(frozen=True)
class SegmentCost:
    """One node's share of a design: FLOPs and memory, and the bits it sends on."""

    node: str
    start: int
    stop: int
    flops: int
    memory_bytes: int
    sent_bits: int  # to the next node (0 for the last)


def segment_costs(design: Design, profile: ModelProfile,
                  input_bits_per_element: int) -> list[SegmentCost]:
    """Per node of the route up to the one that runs the last block: the blocks it runs and
    their cost (see the module docstring)."""
    out = []
    segments = design.segments()
    last = max(j for j, (a, b) in enumerate(segments) if b > a)
    segments = segments[: last + 1]
    for j, (node, (a, b)) in enumerate(zip(design.route[: last + 1], segments, strict=True)):
        flops = sum(blk.flops for blk in profile.blocks[a:b])
        memory = profile.segment_memory_bytes(a, b)
        if b > a:
            dec = profile.codec(a)
            enc = profile.codec(b)
            if dec is not None:
                flops += dec.decoder_flops
                memory += 4 * dec.decoder_params
            if enc is not None:
                flops += enc.encoder_flops
                memory += 4 * enc.encoder_params
        sent = profile.sent_bits(b, input_bits_per_element) if j < len(segments) - 1 else 0
        out.append(SegmentCost(node, a, b, flops, memory, sent))
    return out


def design_pipeline(design: Design, profile: ModelProfile, input_bits_per_element: int, *,
                    return_result: bool = False,
                    backward_flops_factor: float | None = None) -> tuple[Stage, ...]:
    """The stages one request goes through: an inference, or with ``backward_flops_factor`` a
    training step (forward and backward; see the module docstring)."""
    stages: list[Stage] = []
    costs = segment_costs(design, profile, input_bits_per_element)
    forward: Phase | None = "forward" if backward_flops_factor is not None else None  # labels
    for j, cost in enumerate(costs):
        if cost.flops > 0:
            stages.append(Compute(cost.node, float(cost.flops), phase=forward))
        if j < len(costs) - 1:
            stages.append(Transfer(cost.node, design.route[j + 1], float(cost.sent_bits),
                                   phase=forward))
    used = design.route[: len(costs)]
    if backward_flops_factor is not None:
        if return_result:
            raise ValueError("return_result applies to inference; in training mode the "
                             "request ends with the backward pass")
        for j in range(len(costs) - 1, -1, -1):
            if costs[j].flops > 0:
                stages.append(Compute(costs[j].node, backward_flops_factor * costs[j].flops,
                                      phase="backward"))
            grad = profile.gradient_bits(costs[j].start) if j > 0 else 0
            if grad > 0:  # hop j - 1 carried the output of blocks [0, start): a node before
                stages.append(Transfer(used[j], used[j - 1], float(grad),  # holds some
                                       phase="backward"))
        return tuple(stages)
    if return_result and len(used) > 1:
        logits_bits = float(profile.num_classes * 32)
        for u, v in zip(used[:0:-1], used[-2::-1], strict=True):
            stages.append(Transfer(u, v, logits_bits))
    return tuple(stages)
