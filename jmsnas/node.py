"""``jmsnas node``: a node server on one host, waiting for ``jmsnas deploy --hosts``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._args import HelpFormatter, non_negative_int

__all__ = ["add_parser", "host_port", "run"]


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets), or an argparse error naming what was given."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0-65535), got {text!r}")
    return host, int(port)


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "node", formatter_class=HelpFormatter,
        help="serve one host's part of a deployment (for `deploy --hosts`)",
        description="Listen on HOST:PORT for a coordinator (`jmsnas deploy --hosts`) that "
        "proves the shared secret in --token-file; run the node it sends (its segment, links "
        "and neighbours) in a child process, then wait for the next coordinator. Refused "
        "connections are logged on stderr, one line each. Stop with Ctrl-C.",
    )
    p.add_argument("--listen", required=True, type=host_port, metavar="HOST:PORT",
                   help="the address to listen on (the node's data port opens on the same "
                   "host; 0.0.0.0 means every interface, only if you ask for it; required)")
    p.add_argument("--token-file", required=True, metavar="FILE",
                   help="the shared secret, the same file as the coordinator's (make one with "
                   "`openssl rand -hex 32 > FILE`; required)")
    p.add_argument("--data-port", type=non_negative_int, default=0,
                   help="the port for the frames from the node before this one (0: a free "
                   "port, told to the coordinator); fix it to open one port in a firewall")
    # test-only: a clock that is not the host's, to check that deploy recovers it
    p.add_argument("--clock-offset-s", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--clock-drift-ppm", type=float, default=0.0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deploy.auth import read_token, token_readable_by_others
    from deploy.clock import Clock
    from deploy.node import log_line
    from deploy.server import NodeServer

    host, port = args.listen
    secret = read_token(args.token_file)
    if token_readable_by_others(args.token_file):
        log_line(f"warning: {args.token_file} is readable by other users (chmod 600 it)")
    try:
        server = NodeServer(host, port, secret, data_port=args.data_port,
                            clock=Clock(args.clock_offset_s, args.clock_drift_ppm))
    except OSError as exc:
        print(f"jmsnas: error: cannot listen on {host}:{port} ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    server.serve_forever()
    return 0
