"""Scenario files: the network, the workload and an optional fixed pipeline, validated.

A scenario is one YAML file (see DESIGN.md, "Scenario file"). ``load_scenario`` reads it with a
YAML 1.2-style float rule (``20e6`` is a number, not a string as in YAML 1.1), validates every
field with pydantic (unknown keys are errors) and then checks the cross-references (links between
known nodes, a connected path, pipeline stages on existing nodes and links). Every failure raises
:class:`~sim.errors.ScenarioError` with one line naming the file and the field.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .channels import read_trace
from .errors import ScenarioError
from .stages import (
    Compute,
    Pipeline,
    Stage,
    Transfer,
    read_arrival_file,
    stages_for_source,
    training_pipeline,
)

__all__ = [
    "ChannelSpec",
    "ComputeStageSpec",
    "ConstantChannel",
    "FileArrivals",
    "GilbertElliottChannel",
    "LinkSpec",
    "NodeSpec",
    "PeriodicArrivals",
    "PoissonArrivals",
    "RayleighChannel",
    "Scenario",
    "ScenarioDeprecation",
    "ShannonChannel",
    "TraceChannel",
    "TransferStageSpec",
    "WorkloadSpec",
    "load_scenario",
    "load_yaml",
    "pipeline_from_specs",
    "read_scenario_dict",
    "scenario_from_dict",
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Spec):
    """A device, edge server or cloud: ``servers`` parallel servers of ``flops_per_s`` FLOP/s
    each (the old key ``flops`` is still read, with a warning)."""

    kind: Literal["device", "edge", "cloud"]
    flops_per_s: PositiveFloat
    servers: Annotated[int, Field(ge=1)] = 1
    power_w: NonNegativeFloat = 0.0
    """Power drawn by one busy server (W); energy = power_w x busy server-seconds (where nodes
    share a host's processors, :class:`sim.engine.CpuShare`: the work's seconds at full
    speed)."""
    memory_bytes: PositiveFloat | None = None


class ConstantChannel(_Spec):
    model: Literal["constant"]
    rate_bps: PositiveFloat
    tx_power_w: NonNegativeFloat = 0.0


class _LinkBudget(_Spec):
    bandwidth_hz: PositiveFloat
    tx_power_dbm: FiniteFloat
    distance_m: PositiveFloat
    pathloss_exponent: Annotated[float, Field(ge=1.0, le=8.0)] = 3.5
    noise_dbm_hz: FiniteFloat = -174.0
    noise_figure_db: NonNegativeFloat = 9.0
    carrier_hz: PositiveFloat = 3.5e9
    reference_distance_m: PositiveFloat = 1.0
    reference_loss_db: FiniteFloat | None = None
    antenna_gain_db: FiniteFloat = 0.0

    def snr_linear(self) -> float:
        """Mean SNR of the link budget (see :func:`sim.channels.mean_snr_linear`)."""
        from .channels import mean_snr_linear

        return mean_snr_linear(**self.model_dump(include=set(_LinkBudget.model_fields)))

    @model_validator(mode="after")
    def _snr_in_range(self) -> _LinkBudget:
        self.snr_linear()  # a ValueError for a budget out of range, named by the link
        return self


class ShannonChannel(_LinkBudget):
    model: Literal["shannon"]


MIN_SOJOURN_S = 1e-4
"""The shortest coherence time or mean Markov sojourn accepted (0.1 ms, a fifth of an LTE
slot): a channel that changes faster is, for frames of milliseconds, its mean rate (give that
as a ``shannon`` or ``constant`` channel), and simulating every block would take hours."""
SojournS = Annotated[float, Field(ge=MIN_SOJOURN_S, allow_inf_nan=False)]


class RayleighChannel(_LinkBudget):
    model: Literal["rayleigh"]
    coherence_s: SojournS
    shadowing_db: Annotated[float, Field(ge=0.0, le=30.0, allow_inf_nan=False)] = 0.0
    """Log-normal shadowing's standard deviation (measured: 4-12 dB; at most 30)."""


class GilbertElliottChannel(_Spec):
    model: Literal["gilbert_elliott"]
    good_rate_bps: PositiveFloat
    bad_rate_bps: NonNegativeFloat
    mean_good_s: SojournS
    mean_bad_s: SojournS
    tx_power_w: NonNegativeFloat = 0.0


class TraceChannel(_Spec):
    model: Literal["trace"]
    file: str
    """CSV with header ``time_s,rate_bps``, relative to the scenario file."""
    scale: PositiveFloat = 1.0
    tx_power_w: NonNegativeFloat = 0.0


ChannelSpec = Annotated[
    ConstantChannel | ShannonChannel | RayleighChannel | GilbertElliottChannel | TraceChannel,
    Field(discriminator="model"),
]


class LinkSpec(_Spec):
    """A directed link; ``duplex: true`` adds the reverse link with an independent realisation."""

    src: str
    dst: str
    propagation_s: NonNegativeFloat = 0.0
    channel: ChannelSpec
    duplex: bool = False

    def tx_power_w(self) -> float:
        """Transmit power while sending (W), for the energy account."""
        if isinstance(self.channel, ShannonChannel | RayleighChannel):
            from .channels import dbm_to_w

            return dbm_to_w(self.channel.tx_power_dbm)
        return self.channel.tx_power_w


class PoissonArrivals(_Spec):
    process: Literal["poisson"]
    rate_hz: PositiveFloat


class PeriodicArrivals(_Spec):
    process: Literal["periodic"]
    rate_hz: PositiveFloat
    phase_s: NonNegativeFloat | None = None
    """First arrival of every source; by default each source draws its own uniform phase."""


class FileArrivals(_Spec):
    process: Literal["file"]
    file: str
    """CSV with header ``time_s`` (and optionally ``source``), relative to the scenario file."""


ArrivalSpec = Annotated[
    PoissonArrivals | PeriodicArrivals | FileArrivals, Field(discriminator="process")
]


class WorkloadSpec(_Spec):
    sources: Annotated[list[str], Field(min_length=1)]
    arrivals: ArrivalSpec
    tasks: Annotated[int, Field(ge=1)] = 2000
    """Tasks per source per replication."""
    warmup_tasks: Annotated[int, Field(ge=0)] = 0
    """The first tasks of each source that are simulated but left out of the statistics."""
    mode: Literal["inference", "training"] = "inference"
    backward_flops_factor: PositiveFloat = 2.0
    """Training mode: backward work = this factor x forward work (our choice: about 2)."""


class ComputeStageSpec(_Spec):
    compute: str
    flops: PositiveFloat
    distribution: Literal["constant", "exponential", "lognormal"] = "constant"
    cv: PositiveFloat = 0.5
    """Coefficient of variation of lognormal work (ignored by the other distributions)."""


class TransferStageSpec(_Spec):
    transfer: tuple[str, str]
    bits: PositiveFloat


def pipeline_from_specs(specs: Sequence[ComputeStageSpec | TransferStageSpec]) -> Pipeline:
    """Turn the scenario's ``pipeline`` entries into stages."""
    out: list[Stage] = []
    for spec in specs:
        if isinstance(spec, ComputeStageSpec):
            out.append(Compute(spec.compute, spec.flops, spec.distribution, spec.cv))
        else:
            out.append(Transfer(spec.transfer[0], spec.transfer[1], spec.bits))
    return tuple(out)


def _stage_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "compute" in value:
            return "compute"
        if "transfer" in value:
            return "transfer"
        return None
    return "compute" if isinstance(value, ComputeStageSpec) else "transfer"


StageSpec = Annotated[
    Annotated[ComputeStageSpec, Tag("compute")] | Annotated[TransferStageSpec, Tag("transfer")],
    Discriminator(
        _stage_tag,
        custom_error_type="stage_kind",
        custom_error_message="a stage needs a 'compute: NODE' or a 'transfer: [SRC, DST]' key",
    ),
]


class Scenario(_Spec):
    """A whole scenario. Build with :func:`load_scenario` or :func:`scenario_from_dict`."""

    name: str
    input_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=4)]
    input_bits_per_element: Annotated[int, Field(ge=1, le=64)] = 8
    nodes: Annotated[dict[str, NodeSpec], Field(min_length=1)]
    links: list[LinkSpec] = Field(default_factory=list)
    path: Annotated[list[str], Field(min_length=1)]
    workload: WorkloadSpec
    pipeline: list[StageSpec] | None = None
    base_dir: str = Field(default=".", exclude=True)
    """Folder that relative file names (traces, arrival files) are resolved against."""

    @field_validator("pipeline")
    @classmethod
    def _non_empty(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None and not v:
            raise ValueError("must have at least one stage when given")
        return v

    def resolve(self, file: str) -> Path:
        """A file name from the scenario, relative to the scenario's folder."""
        p = Path(file)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def directed_links(self) -> list[tuple[int, bool, LinkSpec]]:
        """Every directed link: (index in ``links``, is_reverse, spec)."""
        out: list[tuple[int, bool, LinkSpec]] = []
        for i, link in enumerate(self.links):
            out.append((i, False, link))
            if link.duplex:
                out.append((i, True, link))
        return out

    def graph(self) -> nx.DiGraph:
        """The network as a directed graph: node attribute ``spec``, edge attributes ``spec``,
        ``index`` (position in ``links``) and ``reverse``."""
        g = nx.DiGraph()
        for name, node in self.nodes.items():
            g.add_node(name, spec=node)
        for i, reverse, link in self.directed_links():
            u, v = (link.dst, link.src) if reverse else (link.src, link.dst)
            g.add_edge(u, v, spec=link, index=i, reverse=reverse)
        return g


# --- loading -------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(
    r"""^[-+]?(
        [0-9][0-9_]*\.[0-9_]*([eE][-+]?[0-9]+)?   # 1.5, 1.5e3, 1.
        |\.[0-9_]+([eE][-+]?[0-9]+)?               # .5
        |[0-9][0-9_]*[eE][-+]?[0-9]+               # 20e6 (a string in YAML 1.1)
        |\.(inf|Inf|INF)|\.(nan|NaN|NAN)
    )$""",
    re.X,
)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that reads ``20e6`` as a float, as YAML 1.2 does; libyaml's parser where
    PyYAML has it (about ten times faster on a long trace or a list of thousands), the pure
    Python one otherwise (the same values for every shipped scenario and the documents
    ``tests/test_scenario.py`` compares; the two are known to differ on a few corner cases
    of tabs and ``%YAML`` directives)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))

_TAGS = {"constant", "shannon", "rayleigh", "gilbert_elliott", "trace", "poisson", "periodic",
         "file", "compute", "transfer"}


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part in _TAGS and i > 0 and loc[i - 1] in ("channel", "arrivals")) or (
            part in _TAGS and i > 0 and isinstance(loc[i - 1], int) and "pipeline" in loc[:i]
        ):
            continue  # the discriminator value pydantic inserts into the location
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_validation_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    msg = first["msg"]
    if len(msg) > 200:  # pydantic quotes the input in some messages: a long one is cut
        msg = msg[:150] + "..." + msg[-40:]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    value = first.get("input")
    shown = repr(value)
    if len(shown) > 80:  # a list of thousands of items: its start is enough
        shown = shown[:60] + f"... ({len(shown)} characters)"
    got = "" if first["type"] == "missing" or isinstance(value, dict) else f" (got {shown})"
    more = len(err.errors()) - 1
    tail = f" [and {more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{where}: {_loc(tuple(first['loc']))}: {msg}{got}{tail}"


def load_yaml(text: str) -> Any:
    """Parse YAML with the YAML 1.2 rule for floats (``20e6`` is a number), as scenario files
    are; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Loader)


def read_scenario_dict(path: str | Path) -> dict[str, Any]:
    """A scenario file's YAML as a plain dict, not yet validated (to vary it before
    :func:`scenario_from_dict`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (a byte 0x{exc.object[exc.start]:02x} "
                            f"at offset {exc.start})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of keys to values")
    return data


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and cross-check a scenario YAML file."""
    path = Path(path)
    return scenario_from_dict(read_scenario_dict(path), base_dir=path.parent, where=str(path))


def scenario_from_dict(
    data: dict[str, Any], *, base_dir: str | Path = ".", where: str = "scenario"
) -> Scenario:
    """Validate a scenario given as a dict (as parsed from YAML)."""
    data = _renamed_keys(data, where)
    try:
        scenario = Scenario.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ScenarioError(_format_validation_error(exc, where)) from None
    _check_references(scenario, where)
    return scenario


class ScenarioDeprecation(FutureWarning):
    """A scenario written with an old key, still read (the message says what to write)."""


def _renamed_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with each node's old key ``flops`` moved to ``flops_per_s`` (one warning for
    the file); a node with both is refused."""
    nodes = data.get("nodes")
    if not isinstance(nodes, dict):
        return data
    old = [name for name, node in nodes.items() if isinstance(node, dict) and "flops" in node]
    if not old:
        return data
    for name in old:
        if "flops_per_s" in nodes[name]:
            raise ScenarioError(f"{where}: nodes.{name}: give flops_per_s only (flops is its "
                                f"old name)")
    warnings.warn(f"{where}: nodes.{old[0]}.flops{' and others' if len(old) > 1 else ''}: "
                  f"the key is now flops_per_s (FLOP/s of one server); read as that, rename it",
                  ScenarioDeprecation, stacklevel=3)
    renamed = {name: ({("flops_per_s" if k == "flops" else k): v for k, v in node.items()}
                      if name in old else node) for name, node in nodes.items()}
    return {**data, "nodes": renamed}


def _check_references(s: Scenario, where: str) -> None:
    def fail(field: str, message: str) -> None:
        raise ScenarioError(f"{where}: {field}: {message}")

    names = ", ".join(s.nodes)
    seen: set[tuple[str, str]] = set()
    for i, link in enumerate(s.links):
        for end in ("src", "dst"):
            node = getattr(link, end)
            if node not in s.nodes:
                fail(f"links[{i}].{end}", f"unknown node {node!r} (nodes: {names})")
        if link.src == link.dst:
            fail(f"links[{i}]", f"a link from {link.src!r} to itself")
        pairs = [(link.src, link.dst)] + ([(link.dst, link.src)] if link.duplex else [])
        for pair in pairs:
            if pair in seen:
                fail(f"links[{i}]", f"a second link {pair[0]} -> {pair[1]}")
            seen.add(pair)
        channel = link.channel
        if isinstance(channel, TraceChannel):
            file = s.resolve(channel.file)
            try:
                times, rates = read_trace(str(file))
                from .channels import TraceRate

                TraceRate(times, rates)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                fail(f"links[{i}].channel.file", f"bad rate trace {str(file)!r}: {reason}")
    for j, node in enumerate(s.path):
        if node not in s.nodes:
            fail(f"path[{j}]", f"unknown node {node!r} (nodes: {names})")
    if len(set(s.path)) != len(s.path):
        fail("path", "a node appears twice")
    for u, v in zip(s.path, s.path[1:], strict=False):
        if (u, v) not in seen:
            fail("path", f"no link {u} -> {v}")
    w = s.workload
    for j, src in enumerate(w.sources):
        if src not in s.nodes:
            fail(f"workload.sources[{j}]", f"unknown node {src!r} (nodes: {names})")
    if len(set(w.sources)) != len(w.sources):
        fail("workload.sources", "a source appears twice")
    if w.sources[0] != s.path[0]:
        fail("workload.sources[0]", f"must be the first node of the path ({s.path[0]!r})")
    for j, src in enumerate(w.sources[1:], start=1):
        if src in s.path:
            fail(f"workload.sources[{j}]", f"{src!r} is on the path; other sources must be off it")
        if len(s.path) > 1 and (src, s.path[1]) not in seen:
            fail(f"workload.sources[{j}]",
                 f"no link {src} -> {s.path[1]} (needed to join the path)")
    if w.warmup_tasks >= w.tasks:
        fail("workload.warmup_tasks", f"must be less than tasks ({w.tasks}), got {w.warmup_tasks}")
    if isinstance(w.arrivals, FileArrivals):
        file = s.resolve(w.arrivals.file)
        try:
            per_source = read_arrival_file(str(file), w.sources)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            fail("workload.arrivals.file", f"bad arrival file {str(file)!r}: {reason}")
        for src, arrivals in per_source.items():
            if arrivals.size <= w.warmup_tasks:
                fail("workload.arrivals.file", f"{arrivals.size} arrival(s) for source {src!r}, "
                     f"not more than workload.warmup_tasks ({w.warmup_tasks})")
    if s.pipeline is not None:
        stages = pipeline_from_specs(s.pipeline)
        if w.mode == "training":
            stages = training_pipeline(stages, w.backward_flops_factor)
        n_forward = len(s.pipeline)
        for src in w.sources:
            for k, stage in enumerate(stages_for_source(stages, s.path[0], src)):
                field = f"pipeline[{k if k < n_forward else 2 * n_forward - 1 - k}]"
                if k >= n_forward:
                    field += " (backward pass of training mode)"
                if hasattr(stage, "node"):
                    if stage.node not in s.nodes:
                        fail(field, f"unknown node {stage.node!r} (nodes: {names})")
                elif (stage.src, stage.dst) not in seen:
                    fail(field, f"no link {stage.src} -> {stage.dst}"
                         + (f" for source {src!r}" if src != s.path[0] else ""))
