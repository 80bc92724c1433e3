"""A node's settings as they cross the network to a node server: JSON and segment files.

The coordinator turns a :class:`~deploy.node.NodeSpec` into a ``setup`` message (JSON) and the
segment files it names (bytes); the node server checks the message field by field (a pydantic
model with bounds) and rebuilds the spec with its own listening address, secret, clock and
folder. A channel realisation travels as the table of its rates up to a horizon (the last
arrival plus a margin; beyond it the table repeats): the node paces its links and, on the first
node, picks a policy's states exactly as the coordinator's realisation would. Segment files are
read with ``torch.load(weights_only=True)`` (:func:`models.split.load_segment`): no code from
the wire runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sim.channels import RateProcess, TraceRate
from sim.policy import check_thresholds

from .clock import Clock
from .node import Chooser, NodeSpec, one_line

__all__ = ["SetupError", "load_hosts", "rate_from_wire", "rate_to_wire", "spec_from_wire",
           "spec_to_wire"]

_NAME = Annotated[str, Field(max_length=100)]
_MAX_ROWS = 1_000_000  # two columns of a million numbers: about 40 MB of JSON, under the limit
MAX_SEGMENT_BYTES = 2**30
"""The largest segment file a node server accepts."""


class SetupError(ValueError):
    """A setup message that the node server does not accept (the message names the field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Table(_Strict):
    times_s: Annotated[list[float], Field(min_length=1, max_length=_MAX_ROWS)]
    rates_bps: Annotated[list[float], Field(min_length=1, max_length=_MAX_ROWS)]
    period_s: float


class _Link(_Strict):
    rate: _Table | None
    propagation_s: Annotated[float, Field(ge=0.0, le=3600.0)]


class _Chooser(_Strict):
    rate: _Table
    thresholds_bps: Annotated[list[float], Field(max_length=255)]
    observe_delay_s: Annotated[float, Field(ge=0.0, le=3600.0)]

    @field_validator("thresholds_bps")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        check_thresholds("the thresholds", value)
        return value


class _Setup(_Strict):
    kind: str
    run: _NAME
    name: _NAME
    segments: Annotated[dict[str, Annotated[int, Field(ge=0, lt=256)]],
                        Field(min_length=1, max_length=256)]
    next_hop: dict[str, _NAME]
    servers: Annotated[int, Field(ge=1, le=256)]
    upstream_names: Annotated[list[_NAME], Field(min_length=1, max_length=256)]
    links: Annotated[dict[str, _Link], Field(min_length=1, max_length=256)]
    chooser: _Chooser | None
    max_frame_bytes: Annotated[int, Field(ge=64, le=2**32)]
    horizon_s: Annotated[float, Field(gt=0.0, le=1e7)]

    @field_validator("segments", "next_hop")
    @classmethod
    def _states(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not key.isdigit() or int(key) > 255:
                raise ValueError(f"a state must be 0..255, got {key!r}")
        return value


def rate_to_wire(rate: RateProcess | None, horizon_s: float) -> dict[str, Any] | None:
    if rate is None:
        return None
    times, rates, period = rate.table(horizon_s)
    return {"times_s": times.tolist(), "rates_bps": rates.tolist(), "period_s": period}


def rate_from_wire(table: _Table | None, where: str) -> RateProcess | None:
    if table is None:
        return None
    try:
        return TraceRate(np.array(table.times_s), np.array(table.rates_bps), table.period_s)
    except ValueError as exc:
        raise SetupError(f"{where}: {exc}") from None


def spec_to_wire(spec: NodeSpec, horizon_s: float) -> tuple[dict[str, Any], list[bytes]]:
    """The setup message for ``spec`` and the segment files it refers to (by index)."""
    files = sorted(set(spec.segment_paths.values()))
    chooser = None
    if spec.chooser is not None:
        chooser = {"rate": rate_to_wire(spec.chooser.rate, horizon_s),
                   "thresholds_bps": list(spec.chooser.thresholds_bps),
                   "observe_delay_s": spec.chooser.observe_delay_s}
    message = {
        "kind": "setup", "run": spec.run_id, "name": spec.name,
        "segments": {str(k): files.index(p) for k, p in spec.segment_paths.items()},
        "next_hop": {str(k): d for k, d in spec.next_hop.items()},
        "servers": spec.servers, "upstream_names": list(spec.upstream_names),
        "links": {d: {"rate": rate_to_wire(spec.rates_out[d], horizon_s),
                      "propagation_s": spec.propagation_out[d]} for d in spec.rates_out},
        "chooser": chooser, "max_frame_bytes": spec.max_frame_bytes, "horizon_s": horizon_s,
    }
    return message, [Path(p).read_bytes() for p in files]


def spec_from_wire(message: dict[str, Any], blobs: list[bytes], folder: Path, *,
                   secret: bytes, listen_host: str, data_port: int = 0,
                   clock: Clock | None = None) -> NodeSpec:
    """The node's spec from a checked setup message; the segment files are written into
    ``folder``. Raises :class:`SetupError` naming the field that is wrong."""
    try:
        setup = _Setup.model_validate(message)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SetupError(one_line(f"setup.{where}: {err['msg']}")) from None
    used = set(setup.segments.values())
    if used != set(range(len(blobs))):
        raise SetupError(f"setup.segments: refers to files {sorted(used)}, {len(blobs)} sent")
    if set(setup.next_hop) != set(setup.segments):
        raise SetupError("setup.next_hop: needs one entry per state of setup.segments")
    for k, dest in setup.next_hop.items():
        if dest not in setup.links:
            raise SetupError(f"setup.next_hop.{k}: {dest!r} is not in setup.links")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"segment-{i}.pt"
        path.write_bytes(blob)
        paths.append(str(path))
    chooser = None
    if setup.chooser is not None:
        rate = rate_from_wire(setup.chooser.rate, "setup.chooser.rate")
        assert rate is not None
        chooser = Chooser(rate, tuple(setup.chooser.thresholds_bps),
                          setup.chooser.observe_delay_s)
    return NodeSpec(
        name=setup.name,
        segment_paths={int(k): paths[i] for k, i in setup.segments.items()},
        next_hop={int(k): d for k, d in setup.next_hop.items()},
        servers=setup.servers,
        upstream_names=tuple(setup.upstream_names),
        rates_out={d: rate_from_wire(link.rate, f"setup.links.{d or 'sink'}.rate")
                   for d, link in setup.links.items()},
        propagation_out={d: link.propagation_s for d, link in setup.links.items()},
        chooser=chooser,
        listen_host=listen_host,
        data_port=data_port,
        run_id=setup.run,
        secret=secret,
        max_frame_bytes=setup.max_frame_bytes,
        clock=clock or Clock(),
        horizon_s=setup.horizon_s,
    )




def load_hosts(path: str | Path) -> dict[str, tuple[str, int]]:
    """A hosts file: a YAML mapping of node name to ``HOST:PORT`` of its node server. A
    ValueError names the file and the entry that is wrong."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"hosts file {p}: cannot read it ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(one_line(f"hosts file {p}: not YAML ({exc})")) from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"hosts file {p}: expected a mapping of node name to HOST:PORT")
    hosts = {}
    for node, where in data.items():
        host, sep, port = str(where).rpartition(":")
        host = host.strip("[]")
        if not isinstance(node, str) or not sep or not host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise ValueError(f"hosts file {p}: {node}: expected HOST:PORT (port 1-65535), "
                             f"got {where!r}")
        hosts[node] = (host, int(port))
    return hosts
