"""Each named query on a small hand-built lab capture, with exact expected numbers.

The lab (intranet 192.168.1.0/24), host H = 192.168.1.10, T0 = 2020-02-23T08:54:01Z:
  H ⇄ 93.184.216.34:443 twice (DNS www.example.com, asked by H), H ⇄ 142.250.74.46:443 (SNI only,
  sent inside the connection), H ⇄ 192.168.1.1:53 (mDNS gateway.local), H → 224.0.0.251:5353,
  H → 192.168.1.255:137 (broadcast MAC), H ⇄ 203.0.113.7:47123 (no name, no service name),
  192.168.1.20 → H:22 (H is the server), H ⇄ 8.8.8.8 ICMP echo, 192.168.1.30 ⇄ 93.184.216.34:443.
"""

from __future__ import annotations

import pytest

from collector.queries import ParamError
from collector.store import Store
from hostflow.records import Flow, Name, make_batch

S = 1_000_000
T0 = 1_582_448_041 * S  # one second past a whole minute
B = T0 - S  # that minute
H, EX, GO, GW, MD, BC, UN, PC, DNS8, LT = (
    "192.168.1.10", "93.184.216.34", "142.250.74.46", "192.168.1.1", "224.0.0.251", "192.168.1.255",
    "203.0.113.7", "192.168.1.20", "8.8.8.8", "192.168.1.30",
)  # fmt: skip
LAN = ["192.168.1.0/24"]
WINDOW = {"start": T0 - 60 * S, "end": T0 + 600 * S, "intranet": LAN}


def _flow(start_s, src, sport, dst, dport, packets, size, init, proto=6, dur_s=2.0, mac=""):
    start = T0 + int(start_s * S)
    return Flow("lab", start, start + int(dur_s * S), 4, proto, src, sport, dst, dport, packets, size,
                dst_mac=mac, initiator=init, end_reason="fin" if proto == 6 else "idle")  # fmt: skip


FLOWS = [
    _flow(0, H, 50001, EX, 443, 10, 1000, "src"),
    _flow(0.01, EX, 443, H, 50001, 20, 20000, "dst"),
    _flow(70, H, 50002, EX, 443, 5, 2000, "src"),
    _flow(70.01, EX, 443, H, 50002, 15, 10000, "dst"),
    _flow(10, H, 50003, GO, 443, 6, 500, "src", dur_s=1),
    _flow(10.001, GO, 443, H, 50003, 8, 1500, "dst", dur_s=1),
    _flow(-1, H, 40000, GW, 53, 1, 100, "src", proto=17, dur_s=0),
    _flow(-1, GW, 53, H, 40000, 1, 200, "dst", proto=17, dur_s=0),
    _flow(5, H, 5353, MD, 5353, 3, 300, "src", proto=17, mac="01:00:5e:00:00:fb"),
    _flow(6, H, 137, BC, 137, 1, 50, "src", proto=17, mac="ff:ff:ff:ff:ff:ff"),
    _flow(20, H, 50004, UN, 47123, 4, 400, "src"),
    _flow(20.01, UN, 47123, H, 50004, 3, 300, "dst"),
    _flow(30, PC, 51000, H, 22, 30, 400, "src", dur_s=60),
    _flow(30.01, H, 22, PC, 51000, 40, 800, "dst", dur_s=60),
    _flow(40, H, 0, DNS8, 8 * 256, 1, 84, "src", proto=1, dur_s=0),
    _flow(40, DNS8, 0, H, 0, 1, 84, "dst", proto=1, dur_s=0),
    _flow(50, LT, 50100, EX, 443, 2, 700, "src"),
    _flow(50.01, EX, 443, LT, 50100, 3, 3000, "dst"),
]
NAMES = [
    Name("lab", T0 - 10_000, EX, "www.example.com", "dns", H, 300, ["www.example.com", "www.example.com.edgekey.net"], "A"),
    Name("lab", T0 + 10 * S + 5_000, GO, "www.google.com", "sni", H),
    Name("lab", T0 - 2 * S, GW, "gateway.local", "mdns", H, 120, [], "A"),
    Name("lab", T0 - 100 * S, PC, "pc-20", "dhcp", PC),
    Name("lab", T0 - 50 * S, LT, "laptop-30", "netbios", LT),
    Name("lab", T0 - 200 * S, H, "desk-10", "dhcp", H),
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = Store(str(tmp_path_factory.mktemp("queries") / "lab.duckdb"))
    db.ingest("lab:1", "probe", FLOWS, NAMES)
    yield db
    db.close()


def q(store: Store, query_name: str, **params):
    return store.query(query_name, params).to_pylist()


def test_time_range(store):
    assert q(store, "time_range") == [{"first_seen": T0 - S, "last_seen": T0 + 90 * S + 10_000, "flows": 18}]
    assert q(store, "time_range", probe_id="nobody") == [{"first_seen": None, "last_seen": None, "flows": 0}]


def test_hosts(store):
    rows = q(store, "hosts", **WINDOW)
    assert [(r["addr"], r["name"], r["name_source"], r["bytes_sent"], r["bytes_received"], r["packets"],
             r["flows"], r["peers"]) for r in rows] == [
        (H, "desk-10", "dhcp", 5234, 32484, 149, 16, 8),
        (LT, "laptop-30", "netbios", 700, 3000, 5, 2, 1),
        (PC, "pc-20", "dhcp", 400, 800, 70, 2, 1),
        (GW, "gateway.local", "mdns", 200, 100, 2, 2, 1),
    ]  # fmt: skip
    assert (rows[0]["first_seen"], rows[0]["last_seen"]) == (T0 - S, T0 + 90 * S + 10_000)
    everything = q(store, "hosts", **WINDOW, intranet_only=False)
    assert {r["addr"] for r in everything} == {H, LT, PC, GW, EX, GO, MD, BC, UN, DNS8}


PEER_KEYS = ("peer", "label", "service", "scope", "cast", "protocol", "bytes_sent", "bytes_received",
             "packets_sent", "packets_received", "flows", "endpoints", "name_source")  # fmt: skip


def test_host_peers_by_ip(store):
    rows = q(store, "host_peers", host=H, **WINDOW)
    got = [tuple(r[k] for k in PEER_KEYS) for r in rows]
    assert got == [
        (EX, "www.example.com", "https", "internet", "unicast", 6, 3000, 30000, 15, 35, 4, 1, "dns"),
        (GO, "www.google.com", "https", "internet", "unicast", 6, 500, 1500, 6, 8, 2, 1, "sni"),
        (PC, "pc-20", "ssh", "intranet", "unicast", 6, 800, 400, 40, 30, 2, 1, "dhcp"),
        (UN, UN, "tcp/47123", "internet", "unicast", 6, 400, 300, 4, 3, 2, 1, ""),
        (GW, "gateway.local", "domain", "intranet", "unicast", 17, 100, 200, 1, 1, 2, 1, "mdns"),
        (MD, MD, "mdns", "intranet", "multicast", 17, 300, 0, 3, 0, 1, 1, ""),
        (DNS8, DNS8, "icmp", "internet", "unicast", 1, 84, 84, 1, 1, 2, 1, ""),
        (BC, BC, "netbios-ns", "intranet", "broadcast", 17, 50, 0, 1, 0, 1, 1, ""),
    ]
    assert (rows[0]["first_seen"], rows[0]["last_seen"]) == (T0, T0 + 72 * S + 10_000)


def test_host_peers_top_n_folds_the_rest_into_other(store):
    rows = q(store, "host_peers", host=H, **WINDOW, top_n=3)
    assert [r["peer"] for r in rows] == [EX, GO, PC, "other"]
    other = rows[-1]
    assert (other["bytes_sent"], other["bytes_received"], other["flows"], other["endpoints"]) == (
        934,
        584,
        8,
        5,
    )
    assert (other["label"], other["protocol"], other["scope"]) == ("other", 0, "")
    # min_volume folds small peers too; measure changes the ranking
    rows = q(store, "host_peers", host=H, **WINDOW, min_volume=1000)
    assert [r["peer"] for r in rows] == [EX, GO, PC, "other"]
    rows = q(store, "host_peers", host=H, **WINDOW, measure="packets", top_n=2)
    assert [r["peer"] for r in rows] == [PC, EX, "other"]  # 70 packets, 50 packets
    rows = q(store, "host_peers", host=H, **WINDOW, measure="flows", top_n=1)
    assert [(r["peer"], r["flows"]) for r in rows] == [(EX, 4), ("other", 12)]


def test_host_peers_aggregates(store):
    def keys(aggregate: str, **extra) -> list[tuple[str, str]]:
        rows = q(store, "host_peers", host=H, **WINDOW, aggregate=aggregate, top_n=3, **extra)
        return [(r["peer"], r["label"]) for r in rows]

    assert keys("endpoint") == [
        (f"{EX}:443", "www.example.com:443"), (f"{GO}:443", "www.google.com:443"), (PC, "pc-20"), ("other", "other"),
    ]  # fmt: skip
    assert keys("fqdn")[:3] == [("www.example.com",) * 2, ("www.google.com",) * 2, ("pc-20",) * 2]
    assert keys("domain")[:2] == [("example.com",) * 2, ("google.com",) * 2]
    from hostflow.enrich import GeoASN

    geo = GeoASN()
    org_rows = q(store, "host_peers", host=H, **WINDOW, aggregate="org", scopes=["internet"])
    expected: dict[str, int] = {}
    for addr, size in ((EX, 33000), (GO, 2000), (UN, 700), (DNS8, 168)):
        key = geo.lookup(addr).org or addr
        expected[key] = expected.get(key, 0) + size
    assert {r["peer"]: r["bytes_sent"] + r["bytes_received"] for r in org_rows} == expected
    assert geo.lookup(DNS8).org == "Google"  # the shipped data knows it, so org really aggregates


def test_host_peer_filters(store):
    def peers(**filters) -> list[str]:
        return [r["peer"] for r in q(store, "host_peers", host=H, **WINDOW, **filters)]

    assert peers(protocols=["udp"]) == [GW, MD, BC]
    assert peers(protocols=["icmp", "other"]) == [DNS8]
    assert peers(casts=["unicast"], scopes=["internet"]) == [EX, GO, UN, DNS8]
    assert peers(casts=["multicast", "broadcast"]) == [MD, BC]
    assert peers(scopes=["intranet"], protocols=["tcp"]) == [PC]
    sent = q(store, "host_peers", host=H, **WINDOW, direction="sent", top_n=2)
    assert [(r["peer"], r["bytes_sent"], r["bytes_received"]) for r in sent] == [
        (EX, 3000, 0), (PC, 800, 0), ("other", 1434, 0),
    ]  # fmt: skip
    # with the collector's default prefixes 192.168.1.255 is no directed broadcast: only its MAC says so
    assert [r["cast"] for r in q(store, "host_peers", host=H, start=WINDOW["start"]) if r["peer"] == BC] == [
        "broadcast"
    ]


def test_host_counts(store):
    assert q(store, "host_counts", host=H, **WINDOW) == [
        {
            "flows_total": 16,
            "endpoints_total": 8,
            "flows_filtered": 16,
            "endpoints_filtered": 8,
            "peers_aggregated": 8,
        }
    ]
    assert q(store, "host_counts", host=H, **WINDOW, protocols=["tcp"], aggregate="domain") == [
        {
            "flows_total": 16,
            "endpoints_total": 8,
            "flows_filtered": 10,
            "endpoints_filtered": 4,
            "peers_aggregated": 4,
        }
    ]


def test_host_flows(store):
    rows = q(store, "host_flows", host=H, **WINDOW, protocols=["tcp"], scopes=["internet"])
    assert len(rows) == 8
    first = rows[0]
    assert {k: first[k] for k in ("flow_start", "direction", "host_port", "peer_addr", "peer_port", "service",
                                  "bytes", "peer_name", "name_source", "cname_chain", "domain", "scope")} == {
        "flow_start": T0, "direction": "sent", "host_port": 50001, "peer_addr": EX, "peer_port": 443,
        "service": "https", "bytes": 1000, "peer_name": "www.example.com", "name_source": "dns",
        "cname_chain": ["www.example.com", "www.example.com.edgekey.net"], "domain": "example.com",
        "scope": "internet",
    }  # fmt: skip
    served = q(store, "host_flows", host=H, **WINDOW, scopes=["intranet"], protocols=["tcp"])
    assert [(r["direction"], r["host_port"], r["peer_port"], r["service"]) for r in served] == [
        ("received", 22, 51000, "ssh"), ("sent", 22, 51000, "ssh"),
    ]  # fmt: skip
    assert len(q(store, "host_flows", host=H, **WINDOW, limit=3)) == 3


def test_names(store):
    rows = q(store, "names", start=T0 - 300 * S, end=T0 + 60 * S)
    assert [r["name"] for r in rows] == ["desk-10", "pc-20", "laptop-30", "gateway.local", "www.example.com",
                                         "www.google.com"]  # fmt: skip
    assert [r["name"] for r in q(store, "names", host=PC)] == ["pc-20"]
    assert [r["addr"] for r in q(store, "names", name="google")] == [GO]
    assert q(store, "names", addr=EX)[0] == {
        "ts": T0 - 10_000, "client_addr": H, "addr": EX, "name": "www.example.com", "source": "dns", "qtype": "A",
        "ttl": 300, "cname_chain": ["www.example.com", "www.example.com.edgekey.net"], "rcode": 0, "probe_id": "lab",
    }  # fmt: skip
    assert len(q(store, "names", limit=2)) == 2


def test_timeline(store):
    rows = q(store, "timeline", host=H, **WINDOW, bucket=60, by="peer")
    assert [(r["bucket_start"], r["key"], r["bytes"]) for r in rows] == [
        (B, GO, 2000), (B, GW, 300), (B, PC, 1200), (B, BC, 50), (B, UN, 700), (B, MD, 300), (B, DNS8, 168),
        (B, EX, 21000), (B + 60 * S, EX, 12000),
    ]  # fmt: skip
    by_domain = q(store, "timeline", host=H, **WINDOW, bucket=3600, by="domain", scopes=["internet"])
    hour = (T0 // (3600 * S)) * 3600 * S
    assert [(r["bucket_start"], r["key"], r["bytes"], r["flows"]) for r in by_domain] == [
        (hour, UN, 700, 2), (hour, DNS8, 168, 2), (hour, "example.com", 33000, 4), (hour, "google.com", 2000, 2),
    ]  # fmt: skip
    by_service = q(store, "timeline", host=H, **WINDOW, bucket=3600, by="service", protocols=["tcp"])
    assert [(r["key"], r["bytes"]) for r in by_service] == [
        ("https", 35000),
        ("ssh", 1200),
        ("tcp/47123", 700),
    ]


def test_findings(store):
    assert q(store, "findings_unnamed", **WINDOW) == [
        {"host": H, "peer_addr": UN, "peer_port": 47123, "protocol": 6, "bytes": 700, "flows": 2,
         "first_seen": T0 + 20 * S},
        {"host": H, "peer_addr": DNS8, "peer_port": 0, "protocol": 1, "bytes": 168, "flows": 2,
         "first_seen": T0 + 40 * S},
    ]  # fmt: skip
    assert q(store, "findings_ports", start=WINDOW["start"], end=WINDOW["end"]) == [
        {"protocol": 6, "port": 47123, "flows": 2, "bytes": 700, "hosts": 1}
    ]
    new = q(store, "findings_new_peers", start=T0 + 15 * S, end=T0 + 600 * S, intranet=LAN)
    assert [(r["host"], r["peer_addr"], r["bytes"], r["flows"], r["first_seen"]) for r in new] == [
        (H, UN, 700, 2, T0 + 20 * S),
        (PC, H, 1200, 2, T0 + 30 * S),
        (H, DNS8, 168, 2, T0 + 40 * S),
        (LT, EX, 3700, 2, T0 + 50 * S),
    ]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("host_peers", {}, "host: required"),
        ("host_peers", {"host": "10.0.0.300"}, "host: not an IP address"),
        ("host_peers", {"host": H, "aggregate": "planet"}, "aggregate: 'planet' is not one of"),
        ("host_peers", {"host": H, "protocols": ["tcp", "sctp"]}, "protocols: unknown value(s) ['sctp']"),
        ("host_peers", {"host": H, "top_n": "ten"}, "top_n: expected an integer"),
        ("host_peers", {"host": H, "start": "yesterday"}, "start: not a timestamp"),
        ("host_peers", {"host": H, "intranet": ["10.0.0.0/33"]}, "intranet: not a CIDR prefix"),
        ("host_peers", {"host": H, "sql": "DROP TABLE flows"}, "sql: unknown parameter for host_peers"),
        ("hosts", {"start": T0, "end": T0 - 1}, "end: must be after start"),
        ("names", {"limit": -1}, "limit: -1 is out of range"),
        ("timeline", {"host": H, "bucket": 0}, "bucket: must be at least 1 second"),
    ],
)
def test_bad_parameters_are_named(store, name, params, message):
    with pytest.raises(ParamError) as caught:
        store.query(name, params)
    assert str(caught.value).startswith(message)


def test_through_the_real_server_json_and_arrow_agree(collector_server):
    status, answer = collector_server.post_batch(
        make_batch("test-probe", "lab:1", [_relabel(f) for f in FLOWS], [_relabel(n) for n in NAMES])
    )
    assert status == 200 and answer["flows"] == 18
    frame = collector_server.client().query("host_peers", host=H, **WINDOW, top_n=3)
    assert frame["peer"].tolist() == [EX, GO, PC, "other"]
    assert str(frame["bytes_sent"].dtype) == "int64" and str(frame["first_seen"].dtype) == "int64"
    status, payload = collector_server.query_json("host_peers", host=H, **WINDOW, top_n=3)
    assert status == 200 and payload["columns"][:2] == ["peer", "label"]
    assert [row[0] for row in payload["rows"]] == [EX, GO, PC, "other"]
    assert payload["rows"][0][payload["columns"].index("first_seen")] == T0
    status, payload = collector_server.query_json("host_peers", host="nope")
    assert (status, payload) == (400, {"error": "host: not an IP address: 'nope'"})
    status, payload = collector_server.query_json("drop_tables")
    assert status == 404 and "GET /api/v1/queries" in payload["error"]
    listed = collector_server.client().queries()
    assert set(listed) == {"time_range", "probes", "hosts", "host_flows", "host_peers", "host_counts", "names",
                           "timeline", "findings_unnamed", "findings_new_peers", "findings_ports", "flows"}  # fmt: skip
    assert listed["host_peers"]["params"]["aggregate"]["type"].startswith("enum:endpoint,ip,fqdn")


def _relabel(record):
    record = type(record)(**{k: getattr(record, k) for k in record.__slots__})
    record.probe_id = "test-probe"
    return record
