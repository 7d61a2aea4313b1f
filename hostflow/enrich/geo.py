"""Address → country, autonomous system number and organisation, offline.

Shipped data: the ``plevin-db-country`` and ``plevin-db-network`` wheels (installed from PyPI
with the other requirements; see docs/enrichment.md for their sources, licences and build
date), read with the ``plevin`` reader's file API. A user's own MaxMind DB files (GeoLite2 /
GeoIP2 Country, City or ASN, DB-IP lite, IPinfo-style country_asn) replace them when given.

Nothing here touches the network. Private, reserved, loopback, link-local, multicast and
unparsable addresses answer the empty ``GeoInfo`` without an error.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hostflow.enrich.errors import EnrichError

log = logging.getLogger(__name__)

# Shown wherever the shipped geo/ASN answers are shown (the sources' licences ask for it).
SHIPPED_ATTRIBUTION = (
    "Country and network data: plevin databases (Apache-2.0 reader), built from GeoLite2 data created "
    "by MaxMind, IP2Location LITE data available from https://lite.ip2location.com, GeoNames, "
    "RIPE NCC RIS, CAIDA, PeeringDB and the regional internet registries."
)
CACHE_LIMIT = 1 << 20  # distinct addresses kept; the cache is dropped whole past this


@dataclass(frozen=True, slots=True)
class GeoInfo:
    country: str = ""  # ISO 3166-1 alpha-2, upper case, or ""
    asn: int = 0  # origin autonomous system, 0 when unknown
    org: str = ""  # the network's operator (brand or AS name), "" when unknown


EMPTY = GeoInfo()


def _public(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The parsed address when it is a global unicast one, else None."""
    try:
        ip = ipaddress.ip_address(addr.strip("[]") if isinstance(addr, str) else addr)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        return None
    return ip


# ---------------------------------------------------------------- sources


class _Plevin:
    """The shipped plevin databases: geolocated country from one, the network from the other."""

    name = "plevin"

    def __init__(self) -> None:
        import plevin_db_country
        import plevin_db_network
        from plevin.reader import File

        self.country_file = File(plevin_db_country.PATH)
        self.network_file = File(plevin_db_network.PATH)
        self.built = self.network_file.built

    def get(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> GeoInfo:
        number, wide = int(ip), ip.version == 6
        network = (self.network_file.row(number, wide) or {}).get("network") or {}
        place = (self.country_file.row(number, wide) or {}).get("place") or {}
        country = place.get("country") or (place.get("city") or {}).get("country") or ""
        asn = int(network.get("asn") or 0)
        org = _plevin_org(network.get("handle") or "", network.get("operator") or {}, network)
        # The registry's country of the block stands in where no location is known.
        return GeoInfo(str(country or network.get("country") or "").upper(), asn, org)


def _plevin_org(handle: str, operator: Mapping[str, Any], network: Mapping[str, Any]) -> str:
    brand = network.get("brand") or operator.get("brand")
    if brand:
        return str(brand)
    return _brand(str(handle), str(operator.get("company") or ""))


@functools.lru_cache(maxsize=1 << 16)
def _brand(handle: str, company: str) -> str:
    from plevin import derive

    return derive.brand(handle, company) if (handle or company) else ""


class _MaxMind:
    """One user .mmdb file; answers whichever of country / ASN / organisation its records carry."""

    def __init__(self, path: str) -> None:
        import maxminddb

        try:
            self.reader = maxminddb.open_database(path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise EnrichError(f"cannot read {path} as a MaxMind DB (.mmdb) file: {exc}") from exc
        self.name = path
        self.database_type = self.reader.metadata().database_type
        self.built = str(self.reader.metadata().build_epoch)

    def get(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> GeoInfo:
        try:
            record = self.reader.get(ip)
        except (ValueError, TypeError):  # an IPv6 address asked of an IPv4-only file
            return EMPTY
        if not isinstance(record, Mapping):
            return EMPTY
        return GeoInfo(_mmdb_country(record), _mmdb_asn(record), _mmdb_org(record))


def _mmdb_country(record: Mapping[str, Any]) -> str:
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, Mapping) and value.get("iso_code"):
            return str(value["iso_code"]).upper()
        if isinstance(value, str) and len(value) == 2:  # IPinfo / flat layouts
            return value.upper()
    code = record.get("country_code")
    return str(code).upper() if isinstance(code, str) and len(code) == 2 else ""


def _mmdb_asn(record: Mapping[str, Any]) -> int:
    value = record.get("autonomous_system_number", record.get("asn", 0))
    if isinstance(value, str):
        value = value.upper().removeprefix("AS")
        return int(value) if value.isdigit() else 0
    return int(value) if isinstance(value, int) else 0


def _mmdb_org(record: Mapping[str, Any]) -> str:
    for key in ("autonomous_system_organization", "as_name", "asn_name", "organization"):
        if record.get(key):
            return str(record[key])
    return ""


def _merge(answers: Iterable[GeoInfo]) -> GeoInfo:
    country, asn, org = "", 0, ""
    for answer in answers:
        country = country or answer.country
        asn = asn or answer.asn
        org = org or answer.org
    return GeoInfo(country, asn, org) if (country or asn or org) else EMPTY


# ---------------------------------------------------------------- the API


class GeoASN:
    """Country / ASN / organisation of addresses.

    ``mmdb_paths``: the user's MaxMind DB files (country, ASN, or both), asked in the order
    given, each filling the fields the earlier ones left empty. They replace the shipped data;
    with ``fallback=True`` the shipped data still fills what none of them knows.
    Thread-safe; answers are cached per address.
    """

    def __init__(self, mmdb_paths: list[str] | None = None, *, fallback: bool = False) -> None:
        self._sources: list[Any] = [_MaxMind(str(path)) for path in mmdb_paths or []]
        self._want_shipped = not self._sources or fallback
        self._shipped_ready = False
        self._cache: dict[str, GeoInfo] = {}
        self._lock = threading.Lock()

    def _ensure_shipped(self) -> None:
        # Opened on first use: importing and mapping the files costs ~0.2 s the app may not need.
        if self._want_shipped and not self._shipped_ready:
            with self._lock:
                if not self._shipped_ready:
                    self._sources.append(_Plevin())
                    self._shipped_ready = True

    @property
    def attribution(self) -> str:
        """The credit line to show beside answers: the shipped data's, or "" for the user's files."""
        return SHIPPED_ATTRIBUTION if self._want_shipped else ""

    @property
    def sources(self) -> list[str]:
        """What answers, for an about page: ``["plevin 2026-10-04"]`` or the user's paths."""
        self._ensure_shipped()
        return [f"{source.name} {source.built}" for source in self._sources]

    def lookup(self, addr: str) -> GeoInfo:
        found = self._cache.get(addr)
        if found is not None:
            return found
        ip = _public(addr)
        if ip is None:
            found = EMPTY
        else:
            self._ensure_shipped()
            with self._lock:
                found = _merge(source.get(ip) for source in self._sources)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[addr] = found
        return found

    def lookup_many(self, addrs: Iterable[str]) -> dict[str, GeoInfo]:
        """Each distinct address once: ``{addr: GeoInfo}`` (a pandas Series or list will do)."""
        lookup = self.lookup
        return {addr: lookup(addr) for addr in dict.fromkeys(addrs)}
