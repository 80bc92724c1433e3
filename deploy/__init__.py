"""Real execution: a split design run over sockets, one process per node, on this machine or on
node servers across hosts.

- :mod:`deploy.routing`: where each request goes: one design, or a split policy's design per
  channel state.
- :mod:`deploy.wire`: the frame format (raw tensor bytes, no pickle).
- :mod:`deploy.pacing`: a token-bucket sender that follows a channel's rate over time.
- :mod:`deploy.node`: one node process (receiver, FIFO workers, paced sender).
- :mod:`deploy.run`: start the nodes, drive requests, collect per-stage times.
- :mod:`deploy.designs`: designs from JSON, ``front.csv`` rows or split positions.
- :mod:`deploy.server`: a host's node server (``jmsnas node``); :mod:`deploy.auth` the
  shared-secret handshake on every connection; :mod:`deploy.remote` a node's settings as they
  cross the network; :mod:`deploy.clock` the hosts' clocks on the coordinator's timeline.

Like :mod:`search`, this package joins :mod:`models` and :mod:`sim`.
"""

from .designs import design_from_description, load_design, load_routing
from .routing import Routing, used_route
from .run import DeployError, DeployResult, deploy, request_input

__all__ = [
    "DeployError",
    "DeployResult",
    "Routing",
    "deploy",
    "design_from_description",
    "load_design",
    "load_routing",
    "request_input",
    "used_route",
]
