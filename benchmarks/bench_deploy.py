"""Real-execution costs, each against a baseline measured in the same run.

1. Frame encoding and decoding of a split activation (float32 and 8-bit) against ``pickle`` of
   the same tensors (protocol 5), per message.
2. Unpaced loopback throughput of frames (send, receive, parse) against raw ``sendall`` /
   ``recv_into`` of the same bytes into one reused buffer.
3. The pacing sender: CPU time it uses per second of paced traffic, and how late its last byte
   is against the channel's finish time, at two rates.

    python benchmarks/bench_deploy.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import functools
import pickle
import socket
import threading
import time
from collections.abc import Callable

import torch

from deploy.pacing import PacedLink
from deploy.wire import DATA, Message, encode, parse_frame, recv_message
from models.build import quantize
from sim.channels import ConstantRate


def _per_message(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def bench_codec(n: int) -> None:
    x = torch.randn(1, 128, 16, 16)
    print(f"1. codec per message, activation 1x128x16x16 ({x.numel() * 4 / 1024:.0f} KiB float32)")
    for label, tensors in (("float32", (x,)), ("8-bit", quantize(x, 8))):
        frame = encode(Message(DATA, 1, 0.0, tensors))
        blob = pickle.dumps(tensors, protocol=5)
        ours = _per_message(functools.partial(_frame_round_trip, tensors), n)
        theirs = _per_message(functools.partial(_pickle_round_trip, tensors), n)
        print(f"   {label:8s} frame {len(frame):7d} B, encode+parse {ours * 1e6:7.1f} us; pickle "
              f"{len(blob):7d} B, dumps+loads {theirs * 1e6:7.1f} us "
              f"(pickle takes {theirs / ours:.2f}x)")


def _frame_round_trip(tensors: tuple[torch.Tensor, ...]) -> None:
    parse_frame(encode(Message(DATA, 1, 0.0, tensors)))


def _pickle_round_trip(tensors: tuple[torch.Tensor, ...]) -> None:
    pickle.loads(pickle.dumps(tensors, protocol=5))


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()
    for s in (sender, receiver):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, sender, receiver


def bench_throughput(n: int) -> None:
    x = torch.randn(1, 64, 32, 32)
    frame = encode(Message(DATA, 1, 0.0, (x,)))
    print(f"2. unpaced loopback, {n} frames of {len(frame) / 1024:.0f} KiB")
    server, sender, receiver = _pair()

    def parse() -> None:
        for _ in range(n):
            recv_message(receiver)

    def raw() -> None:
        buf = bytearray(1 << 20)
        left = n * len(frame)
        while left:
            left -= receiver.recv_into(buf)

    rates: dict[str, float] = {}
    for label, target in (("raw bytes", raw), ("frames", parse)) * 2:  # the best of two each
        thread = threading.Thread(target=target)
        start = time.perf_counter()
        thread.start()
        for _ in range(n):
            sender.sendall(frame)
        thread.join()
        rate = n * len(frame) * 8 / (time.perf_counter() - start)
        rates[label] = max(rates.get(label, 0.0), rate)
    for s in (server, sender, receiver):
        s.close()
    print(f"   frames {rates['frames'] / 1e9:.2f} Gbit/s, raw bytes {rates['raw bytes'] / 1e9:.2f} "
          f"Gbit/s (frames at {rates['frames'] / rates['raw bytes']:.2f}x raw)")


def _drain(receiver: socket.socket, nbytes: int, done: list[float]) -> None:
    left = nbytes
    while left:
        left -= len(receiver.recv(1 << 16))
    done.append(time.monotonic())


def bench_pacing() -> None:
    print("3. pacing sender: CPU per second of traffic, lateness of the last byte")
    for rate_bps in (2e6, 50e6):
        nbytes = int(rate_bps * 1.0 / 8)
        server, sender, receiver = _pair()
        done: list[float] = []

        thread = threading.Thread(target=_drain, args=(receiver, nbytes, done))
        thread.start()
        link = PacedLink(sender, ConstantRate(rate_bps))
        link.t0 = time.monotonic()
        cpu = time.thread_time()
        start, end, _ = link.send(bytes(nbytes))
        cpu = time.thread_time() - cpu
        thread.join()
        for s in (server, sender, receiver):
            s.close()
        expected = 8 * nbytes / rate_bps
        print(f"   {rate_bps / 1e6:5.0f} Mbit/s: sender CPU {cpu / (end - start) * 100:5.2f}% of "
              f"one core; last byte received {(done[0] - start - expected) * 1e3:+.2f} ms "
              f"against N/R = {expected:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_codec(args.messages)
    bench_throughput(args.messages)
    bench_pacing()


if __name__ == "__main__":
    main()
