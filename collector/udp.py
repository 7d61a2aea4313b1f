"""UDP listeners for NetFlow/IPFIX export: one thread per socket, one shared decoder.

Each socket's datagrams are decoded in arrival order; the decoder (templates, samplers, sequence
state) is shared behind a lock so an exporter may send to any of the ports. ``on_flows(flows,
exporter)`` gets every non-empty decoded batch; an exception there is logged and counted
(``metrics.drops["callback_error"]``), never allowed to stop the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from hostflow.records import Flow

from .netflow import NetflowDecoder, NetflowMetrics

log = logging.getLogger(__name__)

OnFlows = Callable[[list[Flow], str], None]
RECEIVE_BUFFER = 8 * 1024 * 1024  # bursts from a busy exporter outrun the default 200 kB
MAX_DATAGRAM = 65_535
POLL_SECONDS = 0.5  # how often a quiet socket checks for stop() and expires held data


class Listener:
    def __init__(
        self,
        sockets: list[socket.socket],
        on_flows: OnFlows,
        decoder: NetflowDecoder,
        hold_check: float = 1.0,
    ) -> None:
        self.sockets = sockets
        self.ports = [sock.getsockname()[1] for sock in sockets]
        self.decoder = decoder
        self.metrics = decoder.metrics
        self._on_flows = on_flows
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hold_check = hold_check
        self._threads = [
            threading.Thread(target=self._run, args=(sock,), name=f"netflow-udp-{port}", daemon=True)
            for sock, port in zip(sockets, self.ports, strict=True)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        decoder = self.decoder
        lock = self._lock
        next_expiry = time.monotonic() + self._hold_check
        while not self._stop.is_set():
            try:
                datagram, address = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                datagram = None
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("NetFlow socket on port %s failed", sock.getsockname()[1])
                return
            now_us = time.time_ns() // 1000
            if datagram is not None:
                exporter = address[0].removeprefix("::ffff:")
                with lock:
                    flows = decoder.feed(datagram, exporter, now_us)
                if flows:
                    self._deliver(flows, exporter)
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + self._hold_check
                with lock:
                    decoder.expire(now_us)

    def _deliver(self, flows: list[Flow], exporter: str) -> None:
        try:
            self._on_flows(flows, exporter)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            drops = self.metrics.drops
            drops["callback_error"] = drops.get("callback_error", 0) + 1
            log.exception("storing %d NetFlow flows from %s failed", len(flows), exporter)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread and close the sockets."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        for sock in self.sockets:
            sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_udp_listeners(
    host: str,
    ports: list[int],
    on_flows: OnFlows,
    metrics: NetflowMetrics | None = None,
    hold_seconds: float = 30.0,
    hold_limit: int = 10_000,
) -> Listener:
    """Bind one UDP socket per port (0 = any free port) on ``host`` and start decoding.

    Raises OSError with the port in the message when a port cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                log.warning("could not raise the receive buffer of UDP port %s", port)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen for NetFlow on {host}:{port}: {exc.strerror}"
                ) from exc
            sock.settimeout(POLL_SECONDS)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    decoder = NetflowDecoder(hold_seconds=hold_seconds, hold_limit=hold_limit, metrics=metrics)
    listener = Listener(sockets, on_flows, decoder)
    log.info("listening for NetFlow/IPFIX on %s UDP %s", host, ", ".join(map(str, listener.ports)))
    return listener
