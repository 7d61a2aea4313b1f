"""Offline enrichment of flows: service names, registered domains, country/ASN/organisation,
and readable names for intranet hosts. Nothing here downloads anything; see docs/enrichment.md.

    from hostflow.enrich import service_name, registered_domain, GeoASN, HostList, intranet_name
"""

from hostflow.enrich.domains import registered_domain
from hostflow.enrich.errors import EnrichError
from hostflow.enrich.geo import SHIPPED_ATTRIBUTION, GeoASN, GeoInfo
from hostflow.enrich.hostlist import SOURCE_ORDER, HostList, intranet_name
from hostflow.enrich.services import service_description, service_name, unknown_ports

__all__ = [
    "SHIPPED_ATTRIBUTION",
    "SOURCE_ORDER",
    "EnrichError",
    "GeoASN",
    "GeoInfo",
    "HostList",
    "intranet_name",
    "registered_domain",
    "service_description",
    "service_name",
    "unknown_ports",
]
