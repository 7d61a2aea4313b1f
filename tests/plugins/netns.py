"""Network namespaces for tests: two namespaces joined by a veth pair, always cleaned up.

    with veth_pair() as net:              # or the `veth_netns` fixture
        net.run("a", ["python", "-c", ...])   # a command inside namespace a
        with enter_netns(net.ns_a):       # this thread joins namespace a (sockets made here stay in it)
            ...

Names carry the pid and a counter (``hf<pid>x<n>a`` …) so tests running at the same time in other
processes never clash; IPv6 is switched off on the veths so the kernel adds no chatter of its own
(router/neighbour solicitations, MLD) to what a test sends. Needs root.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

_counter = itertools.count()
CLONE_NEWNET = 0x40000000


@dataclass
class VethPair:
    ns_a: str
    ns_b: str
    if_a: str  # inside ns_a
    if_b: str  # inside ns_b
    addr_a: str
    addr_b: str
    mac_a: str = ""
    mac_b: str = ""

    def run(self, side: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        namespace = self.ns_a if side == "a" else self.ns_b
        return subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True, **kwargs)

    def popen(self, side: str, argv: list[str], **kwargs) -> subprocess.Popen:
        namespace = self.ns_a if side == "a" else self.ns_b
        return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def veth_pair(subnet: int | None = None) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth; 10.<x>.<y>.1/24 in a, .2 in b."""
    tag = f"hf{os.getpid() % 100000}x{next(_counter)}"
    third = subnet if subnet is not None else os.getpid() % 250
    octet = 200 + next(_counter) % 50
    pair = VethPair(
        f"{tag}a", f"{tag}b", f"{tag}va", f"{tag}vb", f"10.{octet}.{third}.1", f"10.{octet}.{third}.2"
    )
    created: list[str] = []
    try:
        for namespace in (pair.ns_a, pair.ns_b):
            _ip("netns", "add", namespace)
            created.append(namespace)
        _ip("link", "add", pair.if_a, "netns", pair.ns_a, "type", "veth", "peer", "name", pair.if_b,
            "netns", pair.ns_b)  # fmt: skip
        for namespace, iface, addr in (
            (pair.ns_a, pair.if_a, pair.addr_a),
            (pair.ns_b, pair.if_b, pair.addr_b),
        ):
            for key in ("all", "default", iface):
                subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw",
                                f"net.ipv6.conf.{key}.disable_ipv6=1"], capture_output=True)  # fmt: skip
            _ip("-n", namespace, "addr", "add", f"{addr}/24", "dev", iface)
            _ip("-n", namespace, "link", "set", iface, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        pair.mac_a = _mac(pair.ns_a, pair.if_a)
        pair.mac_b = _mac(pair.ns_b, pair.if_b)
        yield pair
    finally:
        for namespace in created:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)


def _mac(namespace: str, iface: str) -> str:
    out = subprocess.run(["ip", "-n", namespace, "-br", "link", "show", iface], check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    return out[2].lower()


@contextmanager
def enter_netns(namespace: str) -> Iterator[None]:
    """Move the calling thread into a named network namespace, and back afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{namespace}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)


@pytest.fixture
def veth_netns() -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with veth_pair() as pair:
        yield pair
