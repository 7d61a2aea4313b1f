"""NetFlow v1/v5/v9 and IPFIX datagrams → contract flows, with per-exporter template state.

``NetflowDecoder.feed(datagram, exporter, received_us)`` knows nothing of sockets or storage (the
UDP listener is ``collector.udp``; pcap import uses this too). It never raises: bad input is
counted in ``metrics.drops`` by reason and logged once per exporter and reason.

State kept per (exporter address, observation domain / source id / v5 engine):
- templates (refreshed when redefined, withdrawn by IPFIX field count 0);
- sampler rates from options records (samplerId / selectorId → rate; 0 = the domain's default);
- IPFIX systemInitTimeMilliseconds from options records (for flowStart/EndSysUpTime);
- the next expected sequence number (gaps counted in ``metrics.sequence_gaps``);
- data sets that arrived before their template, held up to ``hold_seconds`` (at most
  ``hold_limit`` sets in all) and decoded as soon as the template arrives.

Sampling: a record's own rate elements win, then the rate of its sampler id, then the domain's
default, then the only sampler the domain announced, then the v5 header's interval, else 1.
Counts (packets, bytes) are multiplied by that rate and ``Flow.sampling`` carries it.

``drops`` count units: whole datagrams for header-level reasons (short, unknown_version, sflow,
bad_count, message_length, internal_error), the rest of a datagram for set_length / bad_template /
truncated_record / empty_template (sets before the bad one are kept), data sets for no_template
(held past ``hold_seconds``) and hold_overflow.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from hostflow.records import Flow

from . import ipfix, v5, v9
from .columnar import ColumnBatch
from .fields import emit_records, record_sampler_id, record_sampling
from .templates import DecodeError, FieldSpec, Template, TemplateCache, TemplateKey

log = logging.getLogger(__name__)

__all__ = ["ColumnBatch", "DecodeError", "NetflowDecoder", "NetflowMetrics"]

_STATE_LIMIT = 65_536  # exporter/domain entries kept in each small state table
_LOGGED_LIMIT = 10_000


@dataclass
class NetflowMetrics:
    packets: int = 0  # datagrams fed
    packets_by_version: dict[int, int] = field(default_factory=dict)
    records: int = 0  # data records decoded (flow and options records)
    options_records: int = 0
    flows: int = 0  # flows returned
    drops: dict[str, int] = field(default_factory=dict)
    template_misses: int = 0  # data sets that arrived before their template
    templates_active: int = 0
    sequence_gaps: dict[str, int] = field(default_factory=dict)  # "nf:exporter:domain" → gaps
    held: int = 0  # data sets waiting for their template now
    kernel_drops: int = 0  # datagrams the kernel dropped on a full socket buffer (collector.udp)

    def snapshot(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "packets_by_version": dict(self.packets_by_version),
            "records": self.records,
            "options_records": self.options_records,
            "flows": self.flows,
            "drops": dict(self.drops),
            "template_misses": self.template_misses,
            "templates_active": self.templates_active,
            "sequence_gaps": dict(self.sequence_gaps),
            "held": self.held,
            "kernel_drops": self.kernel_drops,
        }


@dataclass(slots=True)
class _Context:
    """What a data set needs from the packet it came in (kept with held sets)."""

    version: int
    exporter: str
    domain: int
    export_us: int
    uptime_ms: int | None  # v5/v9 SysUptime; None for IPFIX
    received_us: int
    header_sampling: int = 1

    @property
    def probe_id(self) -> str:
        return f"nf:{self.exporter}:{self.domain}"


class NetflowDecoder:
    def __init__(
        self, hold_seconds: float = 30.0, hold_limit: int = 10_000, metrics: NetflowMetrics | None = None
    ):
        self.hold_us = int(hold_seconds * 1_000_000)
        self.hold_limit = hold_limit
        self.metrics = metrics if metrics is not None else NetflowMetrics()
        self.templates = TemplateCache()
        self._samplers: dict[tuple[str, int], dict[int, int]] = {}
        self._init_ms: dict[tuple[str, int], int] = {}
        self._next_sequence: dict[tuple[int, str, int], int | None] = {}
        self._held: OrderedDict[int, tuple[TemplateKey, _Context, bytes]] = OrderedDict()
        self._held_by_key: dict[TemplateKey, list[int]] = {}
        self._held_serial = 0
        self._logged: set[tuple[str, str]] = set()
        self._batch: ColumnBatch | None = None
        self.lock = threading.Lock()  # for callers that share one decoder between threads

    # ------------------------------------------------------------ public

    def feed(
        self, datagram: bytes, exporter: str, received_us: int, batch: ColumnBatch | None = None
    ) -> list[Flow]:
        """Decode one export datagram from ``exporter`` (its source IP). Never raises.

        Without ``batch``: returns the datagram's flows (the per-record path). With ``batch``: the
        flows go into the batch instead (data sets of fixed-length templates queued for the
        columnar path, the rest as Flows) and the list is empty; ``batch.tables()`` makes the tables.
        """
        metrics = self.metrics
        metrics.packets += 1
        out: list[Flow] = []
        self._batch = batch
        try:
            if self._held:
                self.expire(received_us)
            if len(datagram) < 4:
                raise DecodeError("short", f"datagram of {len(datagram)} bytes")
            version = (datagram[0] << 8) | datagram[1]
            metrics.packets_by_version[version] = metrics.packets_by_version.get(version, 0) + 1
            if version == 9:
                self._feed_v9(datagram, exporter, received_us, out)
            elif version == 10:
                self._feed_ipfix(datagram, exporter, received_us, out)
            elif version in (5, 1):
                self._feed_v5(datagram, exporter, received_us, out)
            elif datagram[:4] in (b"\0\0\0\x05", b"\0\0\0\x04"):
                raise DecodeError("sflow", "an sFlow datagram (this port takes NetFlow/IPFIX)")
            else:
                raise DecodeError("unknown_version", f"version {version} is not NetFlow v1/v5/v9 or IPFIX")
        except DecodeError as exc:
            self._drop(exc.reason, exporter, str(exc))
        except Exception:  # noqa: BLE001 - one datagram must never stop the listener
            self._drop("internal_error", exporter, "decoder error")
            log.exception("NetFlow decoder error on a datagram from %s", exporter)
        self._batch = None
        if batch is not None:
            if out:
                batch.add_flows(exporter, out)
            return []
        metrics.flows += len(out)
        return out

    def new_batch(self) -> ColumnBatch:
        """A batch for ``feed``; its ``tables()`` adds the flows it makes to these metrics (under ``lock``)."""
        return ColumnBatch(self.metrics, self.lock)

    def expire(self, now_us: int) -> list[Flow]:
        """Drop data held longer than hold_seconds for a template that never came (counted no_template)."""
        limit = now_us - self.hold_us
        held = self._held
        while held:
            serial, (key, ctx, _body) = next(iter(held.items()))
            if ctx.received_us > limit:
                break
            del held[serial]
            self._forget_held(key, serial)
            self._drop("no_template", ctx.exporter, f"no template {key[3]} within the hold time")
        self.metrics.held = len(held)
        return []

    # ------------------------------------------------------------ versions

    def _feed_v5(self, data: bytes, exporter: str, received_us: int, out: list[Flow]) -> None:
        if self._batch is not None:
            header, body = v5.parse_header(data)
        else:
            header, records = v5.parse(data)
        ctx = _Context(
            header.version, exporter, header.domain, header.export_us, header.sys_uptime, received_us
        )
        if header.version == 5:
            ctx.header_sampling = header.sampling
            self._check_sequence(ctx, header.flow_sequence, header.flow_sequence + header.count)
        self.metrics.records += header.count
        if self._batch is not None:
            template = v5.TEMPLATE_V5 if header.version == 5 else v5.TEMPLATE_V1
            self._queue(ctx, template, body, header.count)
        else:
            self._emit(ctx, records, False, out)

    def _feed_v9(self, data: bytes, exporter: str, received_us: int, out: list[Flow]) -> None:
        header = v9.parse_header(data)
        ctx = _Context(9, exporter, header.source_id, header.export_us, header.sys_uptime, received_us)
        self._check_sequence(ctx, header.package_sequence, header.package_sequence + 1)
        for set_id, body in v9.iter_flowsets(data):
            if set_id >= v9.FIRST_DATA_ID:
                self._data_set(ctx, set_id, body, out)
            elif set_id == v9.TEMPLATE_FLOWSET:
                for template_id, fields in v9.parse_templates(body):
                    self._add_template(ctx, template_id, fields, False, out)
            elif set_id == v9.OPTIONS_FLOWSET:
                for template_id, fields in v9.parse_options_templates(body):
                    self._add_template(ctx, template_id, fields, True, out)

    def _feed_ipfix(self, data: bytes, exporter: str, received_us: int, out: list[Flow]) -> None:
        header = ipfix.parse_header(data)
        ctx = _Context(10, exporter, header.domain, header.export_us, None, received_us)
        sequence_key = (10, exporter, header.domain)
        expected = self._next_sequence.get(sequence_key)
        if expected is not None and expected != header.sequence:
            self._count_gap(ctx)
        records: int | None = 0
        self._next_sequence[sequence_key] = None  # unknown unless every data set decodes
        for set_id, body in ipfix.iter_sets(data, header.length):
            if set_id >= ipfix.FIRST_DATA_ID:
                count = self._data_set(ctx, set_id, body, out)
                records = None if count is None or records is None else records + count
            elif set_id in (ipfix.TEMPLATE_SET, ipfix.OPTIONS_SET):
                options = set_id == ipfix.OPTIONS_SET
                for template_id, fields in ipfix.parse_templates(body, options):
                    if fields is None:
                        self._withdraw(ctx, template_id, options)
                    else:
                        self._add_template(ctx, template_id, fields, options, out)
        if records is not None:
            self._remember_sequence(sequence_key, (header.sequence + records) & 0xFFFFFFFF)
        if header.length < len(data):
            self._drop(
                "trailing_bytes", exporter, f"{len(data) - header.length} bytes after the IPFIX message"
            )

    # ------------------------------------------------------------ templates and data

    def _add_template(
        self, ctx: _Context, template_id: int, fields: tuple[FieldSpec, ...], options: bool, out: list[Flow]
    ) -> None:
        key = (ctx.version, ctx.exporter, ctx.domain, template_id)
        self.templates.add(key, template_id, fields, options)
        self.metrics.templates_active = len(self.templates)
        waiting = self._held_by_key.pop(key, None)
        if waiting:
            for serial in waiting:
                _key, held_ctx, body = self._held.pop(serial)
                self._data_set(held_ctx, template_id, memoryview(body), out)
            self.metrics.held = len(self._held)

    def _withdraw(self, ctx: _Context, template_id: int, options: bool) -> None:
        if template_id in (ipfix.TEMPLATE_SET, ipfix.OPTIONS_SET):
            self.templates.withdraw_all(ctx.version, ctx.exporter, ctx.domain, options)
        else:
            self.templates.withdraw((ctx.version, ctx.exporter, ctx.domain, template_id))
        self.metrics.templates_active = len(self.templates)

    def _data_set(self, ctx: _Context, template_id: int, body: memoryview, out: list[Flow]) -> int | None:
        """Decode one data set; returns its record count, or None when it is held for its template."""
        key = (ctx.version, ctx.exporter, ctx.domain, template_id)
        template = self.templates.get(key)
        if template is None:
            self._hold(key, ctx, body)
            return None
        if template.columnar and self._batch is not None:
            count = len(body) // template.record_len
            self.metrics.records += count
            if count:
                self._queue(ctx, template, body[: count * template.record_len], count)
            return count
        records = template.decode(body)
        self.metrics.records += len(records)
        if template.options or not template.has_addresses:
            self.metrics.options_records += len(records)
            for rec in records:
                self._options_record(ctx, rec)
            return len(records)
        self._emit(ctx, records, template.has_sampling, out)
        return len(records)

    def _rates(self, ctx: _Context) -> tuple[dict[int, int] | None, int | None, int]:
        """The domain's sampler rates, its exporter's init time and the default rate, now."""
        domain_key = (ctx.exporter, ctx.domain)
        samplers = self._samplers.get(domain_key)
        default_rate = ctx.header_sampling
        if samplers:
            default_rate = samplers.get(0) or (
                next(iter(samplers.values())) if len(samplers) == 1 else default_rate
            )
        return samplers, self._init_ms.get(domain_key), default_rate

    def _emit(self, ctx: _Context, records: list[dict[str, Any]], own_rates: bool, out: list[Flow]) -> None:
        samplers, init_ms, default_rate = self._rates(ctx)
        emit_records(
            records,
            ctx.probe_id,
            ctx.export_us,
            ctx.uptime_ms,
            init_ms,
            default_rate,
            samplers,
            own_rates,
            out,
        )

    def _queue(self, ctx: _Context, template: Template, body: memoryview, count: int) -> None:
        samplers, init_ms, default_rate = self._rates(ctx)
        self._batch.add(  # type: ignore[union-attr]
            template,
            ctx.exporter,
            ctx.probe_id,
            ctx.version,
            body,
            count,
            ctx.export_us,
            ctx.uptime_ms,
            init_ms,
            default_rate,
            samplers,
        )

    def _options_record(self, ctx: _Context, rec: dict[str, Any]) -> None:
        domain_key = (ctx.exporter, ctx.domain)
        rate = record_sampling(rec)
        if rate is not None:
            if len(self._samplers) >= _STATE_LIMIT and domain_key not in self._samplers:
                self._samplers.clear()
            # a new dict, never changed in place: queued data sets keep the rates of their moment
            samplers = dict(self._samplers.get(domain_key) or {})
            samplers[record_sampler_id(rec)] = rate
            self._samplers[domain_key] = samplers
        init_ms = rec.get("systemInitTimeMilliseconds")
        if init_ms is not None:
            if len(self._init_ms) >= _STATE_LIMIT:
                self._init_ms.clear()
            self._init_ms[domain_key] = init_ms

    def _hold(self, key: TemplateKey, ctx: _Context, body: memoryview) -> None:
        self.metrics.template_misses += 1
        if self.hold_limit <= 0 or self.hold_us <= 0:
            self._drop("no_template", ctx.exporter, f"no template {key[3]} yet")
            return
        while len(self._held) >= self.hold_limit:
            serial, (old_key, old_ctx, _body) = self._held.popitem(last=False)
            self._forget_held(old_key, serial)
            self._drop("hold_overflow", old_ctx.exporter, "too much data waiting for templates")
        self._held_serial += 1
        self._held[self._held_serial] = (key, ctx, bytes(body))
        self._held_by_key.setdefault(key, []).append(self._held_serial)
        self.metrics.held = len(self._held)

    def _forget_held(self, key: TemplateKey, serial: int) -> None:
        waiting = self._held_by_key.get(key)
        if waiting:
            waiting.remove(serial)
            if not waiting:
                del self._held_by_key[key]

    # ------------------------------------------------------------ bookkeeping

    def _check_sequence(self, ctx: _Context, sequence: int, next_sequence: int) -> None:
        key = (ctx.version, ctx.exporter, ctx.domain)
        expected = self._next_sequence.get(key)
        if expected is not None and expected != sequence:
            self._count_gap(ctx)
        self._remember_sequence(key, next_sequence & 0xFFFFFFFF)

    def _remember_sequence(self, key: tuple[int, str, int], value: int) -> None:
        if len(self._next_sequence) >= _STATE_LIMIT and key not in self._next_sequence:
            self._next_sequence.clear()
        self._next_sequence[key] = value

    def _count_gap(self, ctx: _Context) -> None:
        gaps = self.metrics.sequence_gaps
        gaps[ctx.probe_id] = gaps.get(ctx.probe_id, 0) + 1

    def _drop(self, reason: str, exporter: str, message: str) -> None:
        drops = self.metrics.drops
        drops[reason] = drops.get(reason, 0) + 1
        if (exporter, reason) in self._logged:
            log.debug("NetFlow from %s: %s: %s", exporter, reason, message)
            return
        if len(self._logged) < _LOGGED_LIMIT:
            self._logged.add((exporter, reason))
        log.warning(
            "NetFlow from %s dropped (%s): %s (further ones logged at debug level)", exporter, reason, message
        )
