"""``jmsnas profile``: per-block FLOPs, parameters and split sizes of an architecture."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ._args import HelpFormatter, positive_int

if TYPE_CHECKING:
    from models.profile import ModelProfile

__all__ = ["add_parser", "format_profile", "run"]


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "profile", formatter_class=HelpFormatter,
        help="per-block FLOPs, parameters and split sizes of an architecture",
        description="Profile an architecture at an input shape. MODEL_OR_GENOME is a reference "
        "model (alexnet, vgg16, resnet18, resnet50, mobilenet_v2), SPACE:G,G,... (e.g. "
        "tiny:0,1,0,1,0,0,0,0,0), an architecture name such as tiny-010100000, or a JSON file.",
    )
    p.add_argument("model", metavar="MODEL_OR_GENOME")
    p.add_argument("--input-shape", nargs=3, type=positive_int, metavar=("C", "H", "W"),
                   required=True, help="shape of one input (required)")
    p.add_argument("--classes", type=positive_int, default=1000,
                   help="classes of the output layer")
    p.add_argument("--input-bits", type=positive_int, default=8,
                   help="bits per input element when the raw input is sent")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Profile the architecture (builds it with torch) and print a table or JSON."""
    from models.profile import profile_model
    from models.resolve import resolve_architecture

    spec = resolve_architecture(args.model)
    p = profile_model(spec, args.input_shape, args.classes)
    if args.json:
        out = {
            "arch": p.arch, "input_shape": list(p.input_shape), "num_classes": p.num_classes,
            "total_flops": p.total_flops, "total_params": p.total_params,
            "architecture": spec.to_dict(),
            "blocks": [
                {"split_after": b.index + 1, "label": b.label, "flops": b.flops,
                 "params": b.params, "out_shape": list(b.out_shape),
                 "sent_bits_float32": p.sent_bits(b.index + 1),
                 "peak_memory_bytes": b.peak_memory_bytes}
                for b in p.blocks
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        print(format_profile(p, args.input_bits))
    return 0


def format_profile(p: ModelProfile, input_bits: int) -> str:
    """The printed table: one row per split position, the raw input first."""
    lines = [
        f"{p.arch}: input {'x'.join(map(str, p.input_shape))}, {p.num_classes} classes, "
        f"{p.total_flops / 1e9:.3f} GFLOPs ({p.total_flops / 2e9:.3f} G multiply-adds), "
        f"{p.total_params / 1e6:.3f} M parameters",
        f"{'split':>5}  {'block':<28} {'output':<14} {'MFLOPs':>10} {'cum %':>6} "
        f"{'params':>10} {'sent at split, bits':>20} {'peak MiB':>9}",
        f"{0:>5}  {'(input)':<28} {'x'.join(map(str, p.input_shape)):<14} {'':>10} {'':>6} "
        f"{'':>10} {p.sent_bits(0, input_bits):>20,} {'':>9}",
    ]
    cum = 0
    for b in p.blocks:
        cum += b.flops
        lines.append(
            f"{b.index + 1:>5}  {b.label[:28]:<28} {'x'.join(map(str, b.out_shape)):<14} "
            f"{b.flops / 1e6:>10.2f} {100 * cum / max(p.total_flops, 1):>6.1f} {b.params:>10,} "
            f"{p.sent_bits(b.index + 1):>20,} {b.peak_memory_bytes / 2**20:>9.2f}"
        )
    return "\n".join(lines)
