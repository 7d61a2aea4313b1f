"""UDP listeners for NetFlow/IPFIX export: one thread per socket, one shared decoder.

Each socket's datagrams are decoded in arrival order; the decoder (templates, samplers, sequence
state) is shared behind its lock so an exporter may send to any of the ports. Two ways to hand
flows on:

- ``on_batch(batch)`` (the collector's): the thread drains every datagram waiting on its socket
  (up to ``BURST`` per wakeup, one lock for all of them), queues their data sets in a
  ``ColumnBatch`` and hands the batch over once it holds ``batch_records`` records, the socket is
  empty, or ``batch_seconds`` have passed. Decoding the sets into Arrow columns
  (``batch.tables()``) is the consumer's work, so this thread goes straight back to the socket.
- ``on_flows(flows, exporter)``: Flow objects per datagram (the per-record path; tests, tools).

An exception in the callback is logged and counted (``metrics.drops["callback_error"]``), never
allowed to stop the thread. The socket asks for a ``receive_buffer`` of 32 MB (SO_RCVBUFFORCE when
allowed, else SO_RCVBUF, which net.core.rmem_max caps) and for the kernel's count of datagrams it
dropped because that buffer was full (SO_RXQ_OVFL): ``metrics.kernel_drops``.
"""

from __future__ import annotations

import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable

from hostflow.records import Flow

from .netflow import ColumnBatch, NetflowDecoder, NetflowMetrics

log = logging.getLogger(__name__)

OnFlows = Callable[[list[Flow], str], None]
OnBatch = Callable[[ColumnBatch], None]
RECEIVE_BUFFER = 32 * 1024 * 1024  # bursts from a busy exporter outrun the default 200 kB
MAX_DATAGRAM = 65_535
POLL_SECONDS = 0.5  # how often a quiet socket checks for stop() and expires held data
BURST = 256  # datagrams read per wakeup before the decoder lock is taken
BATCH_RECORDS = 50_000
BATCH_SECONDS = 0.25
# Linux: SO_RXQ_OVFL asks for the socket's drop counter with each datagram; SO_RCVBUFFORCE
# passes net.core.rmem_max (CAP_NET_ADMIN). Python's socket module names neither.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_ANCILLARY = socket.CMSG_SPACE(4)


class Listener:
    def __init__(
        self,
        sockets: list[socket.socket],
        on_flows: OnFlows | None,
        decoder: NetflowDecoder,
        hold_check: float = 1.0,
        on_batch: OnBatch | None = None,
        batch_records: int = BATCH_RECORDS,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        if (on_flows is None) == (on_batch is None):
            raise ValueError("give exactly one of on_flows and on_batch")
        self.sockets = sockets
        self.ports = [sock.getsockname()[1] for sock in sockets]
        self.decoder = decoder
        self.metrics = decoder.metrics
        self._on_flows = on_flows
        self._on_batch = on_batch
        self._batch_records = batch_records
        self._batch_seconds = batch_seconds
        self._lock = decoder.lock
        self._stop = threading.Event()
        self._hold_check = hold_check
        self._kernel_drops = [0] * len(sockets)
        run = self._run if on_flows is not None else self._run_batches
        self._threads = [
            threading.Thread(target=run, args=(sock, index), name=f"netflow-udp-{port}", daemon=True)
            for index, (sock, port) in enumerate(zip(sockets, self.ports, strict=True))
        ]
        for thread in self._threads:
            thread.start()

    def _receive(self, sock: socket.socket, index: int, poller: select.poll) -> tuple[list, bool] | None:
        """Up to BURST waiting datagrams (waiting at most POLL_SECONDS for the first) and whether
        the socket is now empty; None when the socket failed."""
        burst: list[tuple[bytes, str]] = []
        try:
            if not poller.poll(POLL_SECONDS * 1000):
                return burst, True
            recvmsg = sock.recvmsg
            for _ in range(BURST):
                datagram, ancillary, _flags, address = recvmsg(MAX_DATAGRAM, _ANCILLARY)
                if ancillary:
                    self._note_drops(index, ancillary)
                burst.append((datagram, address[0].removeprefix("::ffff:")))
        except (BlockingIOError, InterruptedError):
            return burst, True
        except OSError:
            if not self._stop.is_set():
                log.exception("NetFlow socket on port %s failed", self.ports[index])
            return None
        return burst, False

    def _run(self, sock: socket.socket, index: int) -> None:
        decoder = self.decoder
        lock = self._lock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        next_expiry = time.monotonic() + self._hold_check
        while not self._stop.is_set():
            received = self._receive(sock, index, poller)
            if received is None:
                return
            now_us = time.time_ns() // 1000
            for datagram, exporter in received[0]:
                with lock:
                    flows = decoder.feed(datagram, exporter, now_us)
                if flows:
                    self._deliver(flows, exporter)
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + self._hold_check
                with lock:
                    decoder.expire(now_us)

    def _run_batches(self, sock: socket.socket, index: int) -> None:
        decoder = self.decoder
        lock = self._lock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        batch = decoder.new_batch()
        next_expiry = time.monotonic() + self._hold_check
        due = time.monotonic() + self._batch_seconds
        while not self._stop.is_set():
            received = self._receive(sock, index, poller)
            if received is None:
                break
            burst, drained = received
            now_us = time.time_ns() // 1000
            if burst:
                with lock:
                    for datagram, exporter in burst:
                        decoder.feed(datagram, exporter, now_us, batch)
            now = time.monotonic()
            if batch.records and (drained or batch.records >= self._batch_records or now >= due):
                batch = self._hand_over(batch)
                due = now + self._batch_seconds
            if now >= next_expiry:
                next_expiry = now + self._hold_check
                with lock:
                    decoder.expire(now_us)
        if batch.records:
            self._hand_over(batch)

    def _hand_over(self, batch: ColumnBatch) -> ColumnBatch:
        try:
            self._on_batch(batch)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            with self._lock:
                drops = self.metrics.drops
                drops["callback_error"] = drops.get("callback_error", 0) + 1
            log.exception("handing over %d NetFlow records failed", batch.records)
        return self.decoder.new_batch()

    def _note_drops(self, index: int, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                count = int.from_bytes(data[:4], sys.byteorder)
                if count > self._kernel_drops[index]:
                    self._kernel_drops[index] = count
                    self.metrics.kernel_drops = sum(self._kernel_drops)

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
    on_flows: OnFlows | None = None,
    metrics: NetflowMetrics | None = None,
    hold_seconds: float = 30.0,
    hold_limit: int = 10_000,
    *,
    on_batch: OnBatch | None = None,
    receive_buffer: int = RECEIVE_BUFFER,
    batch_records: int = BATCH_RECORDS,
    batch_seconds: float = BATCH_SECONDS,
) -> Listener:
    """Bind one UDP socket per port (0 = any free port) on ``host`` and start decoding; flows go
    to ``on_flows`` (Flow lists) or ``on_batch`` (ColumnBatch, the fast path): give one.

    Raises OSError with the port in the message when a port cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            _receive_buffer(sock, port, receive_buffer)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            except OSError:
                log.info("UDP port %s: the kernel does not report socket drops (SO_RXQ_OVFL)", port)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen for NetFlow on {host}:{port}: {exc.strerror}"
                ) from exc
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    decoder = NetflowDecoder(hold_seconds=hold_seconds, hold_limit=hold_limit, metrics=metrics)
    listener = Listener(
        sockets,
        on_flows,
        decoder,
        on_batch=on_batch,
        batch_records=batch_records,
        batch_seconds=batch_seconds,
    )
    log.info("listening for NetFlow/IPFIX on %s UDP %s", host, ", ".join(map(str, listener.ports)))
    return listener


def _receive_buffer(sock: socket.socket, port: int, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer; returns what the kernel granted (and warns if less)."""
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            continue
        break
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
    if granted < size:
        log.warning(
            "UDP port %s: receive buffer %d bytes, not the %d asked for; bursts may be dropped "
            "(raise net.core.rmem_max, or run with CAP_NET_ADMIN)",
            port,
            granted,
            size,
        )
    return granted
