"""Optional link shaping with Linux traffic control between network namespaces (needs root).

Instead of pacing inside the sender (:mod:`deploy.pacing`), each hop j of the route becomes a veth
pair between node j's and node j+1's network namespace, and the sending end gets a token-bucket
filter (``tbf``) qdisc at the link's rate. Node 0 (the device, beside the client) stays in the
namespace it was started in; every later node gets its own. Time-varying channels are followed by
changing the qdisc's rate whenever the channel's rate changes (checked every ``step_s``). The
propagation delay stays in the receiving node (as with pacing): ``netem``, the qdisc that could
delay packets, is often not built into container kernels (it is not on the machine this was
written on), while ``tbf`` is.

tbf counts whole Ethernet frames (1514 bytes for 1448 bytes of TCP payload with timestamps), so
the qdisc rate is the link's rate x 1514 / 1448: the payload then flows at the scenario's rate,
as in the simulator (our choice; the ACKs of the reverse direction are not shaped). The bucket
holds 1 ms of traffic (at least two frames), the queue 64 MB.

The namespaces are named ``jms<pid>n<j>`` and removed on exit; ones left by a killed run (whose
pid is gone) are removed by the next run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.channels import ConstantRate, RateProcess

__all__ = ["NetnsHosts", "TcLinks", "netns_unavailable", "setns"]

WIRE_FACTOR = 1514 / 1448
_NAME = re.compile(r"^jms(\d+)n\d+$")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"tc {' '.join(args)}: {done.stderr.strip()}")


def netns_unavailable() -> str | None:
    """Why tc shaping cannot run here, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "--shaper tc needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"--shaper tc needs the {tool!r} command (iproute2)"
    probe = f"jms{os.getpid()}n99"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except OSError as exc:
        return f"--shaper tc: cannot create a network namespace ({exc})"
    return None


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd`` (Linux ``setns(2)``;
    sockets stay in the namespace they were made in)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _remove_stale() -> None:
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge").splitlines():
        m = re.match(r"^\d+: jms(\d+)br[:@]", line)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "link", "del", f"jms{m.group(1)}br"], capture_output=True,
                           check=False)


def _free_subnet(pid: int) -> str:
    """``10.213.X`` with X not used by any address here (X starts at pid mod 250)."""
    used = _ip("-o", "addr", "show")
    for k in range(250):
        subnet = f"10.213.{(pid + k) % 250}"
        if f" {subnet}." not in used:
            return subnet
    raise OSError("no free 10.213.X.0/24 subnet for the tc links")


@dataclass
class _Hop:
    namespace: str | None  # the sender's namespace (None: where we run)
    device: str
    rate: RateProcess
    current_bps: float = 0.0


class TcLinks:
    """The namespaces, veth pairs and qdiscs of one deployment; a context manager."""

    def __init__(self, nodes: int, hops: Sequence[RateProcess], step_s: float = 0.005) -> None:
        if len(hops) != nodes - 1:
            raise ValueError("one hop between each pair of consecutive nodes")
        pid = os.getpid()
        self.namespaces: list[str | None] = [None] + [f"jms{pid}n{j}" for j in range(1, nodes)]
        self.subnet = _free_subnet(pid)
        self.addresses = ["127.0.0.1"] + [f"{self.subnet}.{4 * j + 2}" for j in range(nodes - 1)]
        """Where node j listens (node j > 0: its end of the hop from node j-1)."""
        self.hops = [_Hop(self.namespaces[j], f"jms{pid}h{j}a", rate)
                     for j, rate in enumerate(hops)]
        self.step_s = step_s
        self.t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        """Why following a channel failed (the run checks it and stops)."""

    def netns_path(self, node: int) -> str | None:
        ns = self.namespaces[node]
        return None if ns is None else f"/var/run/netns/{ns}"

    def __enter__(self) -> TcLinks:
        _remove_stale()
        try:
            for ns in self.namespaces[1:]:
                assert ns is not None
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            for j, hop in enumerate(self.hops):
                peer = hop.device[:-1] + "b"
                _ip("link", "add", hop.device, "type", "veth", "peer", "name", peer)
                for dev, ns, host in ((hop.device, self.namespaces[j], 4 * j + 1),
                                      (peer, self.namespaces[j + 1], 4 * j + 2)):
                    where = [] if ns is None else ["-n", ns]
                    if ns is not None:
                        _ip("link", "set", dev, "netns", ns)
                    _ip(*where, "addr", "add", f"{self.subnet}.{host}/30", "dev", dev)
                    _ip(*where, "link", "set", dev, "up")
                self._set(hop, float(hop.rate.rate_at(np.array([0.0]))[0]), "add")
        except BaseException:
            self.close()
            raise
        return self

    def _set(self, hop: _Hop, rate_bps: float, verb: str = "change") -> None:
        where = [] if hop.namespace is None else ["-n", hop.namespace]
        wire = max(rate_bps, 8000.0) * WIRE_FACTOR
        burst = max(2 * 1514, int(wire * 0.001 / 8))
        _tc(*where, "qdisc", verb, "dev", hop.device, "root", "tbf", "rate", f"{wire:.0f}bit",
            "burst", str(burst), "limit", str(64 * 2**20))
        hop.current_bps = rate_bps

    def start(self, t0: float) -> None:
        """Follow the time-varying channels from ``t0`` (a ``time.monotonic()`` value) on."""
        self.t0 = t0
        if all(isinstance(h.rate, ConstantRate) for h in self.hops):
            return
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.step_s):
            t = time.monotonic() - self.t0
            for hop in self.hops:
                r = float(hop.rate.rate_at(np.array([max(t, 0.0)]))[0])
                if abs(r - hop.current_bps) > 0.01 * hop.current_bps:
                    try:
                        self._set(hop, r)
                    except OSError as exc:
                        if not self._stop.is_set():
                            self.error = str(exc)
                        return

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for hop in self.hops:  # the root-side end of hop 0; the others go with their namespace
            if hop.namespace is None:
                subprocess.run(["ip", "link", "del", hop.device], capture_output=True, check=False)
        for ns in self.namespaces[1:]:
            assert ns is not None
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class NetnsHosts:
    """``hosts`` network namespaces that stand for separate machines on one LAN: each has its
    own IP address on a veth pair whose other end is on a bridge here, which holds
    :attr:`gateway` (this namespace's address on that LAN). A context manager (root only);
    :meth:`command` runs a program inside host j. Links are not shaped: a deployment across
    them paces its links in the senders, as across real machines."""

    def __init__(self, hosts: int) -> None:
        pid = os.getpid()
        self.namespaces = [f"jms{pid}n{j}" for j in range(hosts)]
        self.bridge = f"jms{pid}br"
        self.subnet = _free_subnet(pid)
        self.gateway = f"{self.subnet}.1"
        self.addresses = [f"{self.subnet}.{10 + j}" for j in range(hosts)]

    def command(self, j: int, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[j], *argv]

    def __enter__(self) -> NetnsHosts:
        _remove_stale()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for j, ns in enumerate(self.namespaces):
                here, there = f"{self.bridge[:-2]}v{j}a", f"{self.bridge[:-2]}v{j}b"
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("link", "add", here, "type", "veth", "peer", "name", there)
                _ip("link", "set", here, "master", self.bridge)
                _ip("link", "set", here, "up")
                _ip("link", "set", there, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{self.addresses[j]}/24", "dev", there)
                _ip("-n", ns, "link", "set", there, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in self.namespaces:  # a namespace takes its end of the veth pair with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
