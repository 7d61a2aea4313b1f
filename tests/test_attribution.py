"""Each name-attribution rule (collector/attribution.py docstring), pinned one by one, then through
the store's queries so the wiring (peer-only lookup, both directions) is pinned too."""

from __future__ import annotations

import pytest

from collector.attribution import Attributor, Rules
from collector.store import Store
from hostflow.records import Flow, Name

S = 1_000_000
T = 1_700_000_000 * S
HOST, OTHER, SERVER = "10.1.1.10", "10.1.1.11", "198.51.100.7"


def name(ts, value, source="dns", client=HOST, ttl=300, addr=SERVER, chain=()):
    return {"ts": ts, "addr": addr, "name": value, "source": source, "client_addr": client, "ttl": ttl,
            "cname_chain": list(chain)}  # fmt: skip


def label(names, start, end=None, host=HOST, rules=None, peer=SERVER):
    hit = Attributor(names, rules).lookup(peer, host, start, end)
    return hit.name if hit else None


def test_latest_name_at_or_before_the_flow_start():
    names = [name(T - 100 * S, "old.example"), name(T - 10 * S, "new.example")]
    assert label(names, T) == "new.example"
    assert label(names, T - 50 * S) == "old.example"
    assert label(names, T - 10 * S) == "new.example"  # "at" the start counts
    assert label(names, T - 101 * S) is None


def test_dns_valid_for_ttl_plus_grace():
    names = [name(T, "a.example", ttl=60)]
    assert label(names, T + (60 + 3600) * S) == "a.example"
    assert label(names, T + (60 + 3600) * S + 1) is None
    assert label(names, T + 61 * S, rules=Rules(grace_s=0)) is None
    assert label(names, T + 59 * S, rules=Rules(grace_s=0)) == "a.example"


def test_names_without_ttl_use_the_validity_window():
    for source in ("sni", "http", "dhcp"):
        names = [name(T, "b.example", source=source, ttl=0)]
        assert label(names, T + 3600 * S) == "b.example"
        assert label(names, T + 3600 * S + 1) is None
        assert label(names, T + 601 * S, rules=Rules(validity_s=600)) is None
    # a DNS answer with TTL 0 is treated like a name without TTL, not as expired at once
    assert label([name(T, "zero.example", ttl=0)], T + 1800 * S) == "zero.example"


def test_answers_seen_by_the_same_client_first():
    names = [name(T - 10 * S, "mine.example", client=HOST), name(T - 5 * S, "theirs.example", client=OTHER)]
    assert label(names, T, host=HOST) == "mine.example"
    assert label(names, T, host=OTHER) == "theirs.example"
    assert label(names, T, host="10.1.1.99") == "theirs.example"  # no own answer: the latest of anyone's
    # a same-client SNI still beats another client's DNS answer
    names = [
        name(T - 10 * S, "dns.other", client=OTHER),
        name(T - 20 * S, "sni.mine", source="sni", client=HOST),
    ]
    assert label(names, T) == "sni.mine"


def test_dns_over_sni_over_http():
    dns, sni, http = (
        name(T - S, f"{s}.example", source=s, ttl=300 if s == "dns" else 0) for s in ("dns", "sni", "http")
    )
    assert label([http, sni, dns], T) == "dns.example"
    assert label([http, sni], T) == "sni.example"
    assert label([http], T) == "http.example"
    # not only at the same instant: a still-valid DNS answer beats a fresher SNI
    assert (
        label([name(T - 200 * S, "dns.example"), name(T - S, "sni.example", source="sni", ttl=0)], T)
        == "dns.example"
    )


def test_sni_inside_the_flow_names_it_but_dns_after_the_start_does_not():
    flow_start, flow_end = T, T + 2 * S
    sni = name(T + 5_000, "in-flow.example", source="sni", ttl=0)
    assert label([sni], flow_start, flow_end) == "in-flow.example"
    assert label([name(T + 5_000, "host-header.example", source="http", ttl=0)], flow_start, flow_end) == (
        "host-header.example"
    )
    assert label([sni], flow_start, flow_start + 1_000) is None  # the hello came after the flow ended
    assert label([sni], flow_start, flow_end, host=OTHER) is None  # another client's connection
    assert label([name(T + 1_000, "late-dns.example")], flow_start, flow_end) is None


def test_only_the_address_it_was_resolved_to():
    names = [name(T - S, "next-door.example", addr="198.51.100.8")]
    assert label(names, T) is None
    assert label(names, T, peer="198.51.100.8") == "next-door.example"


def test_shown_name_is_the_first_of_the_chain_and_chain_and_source_are_kept():
    names = [name(T - S, "www.example.com", chain=("www.example.com", "e9.cdn.example.net"))]
    hit = Attributor(names).lookup(SERVER, HOST, T)
    assert (hit.name, hit.source, hit.cname_chain, hit.ts) == (
        "www.example.com", "dns", ("www.example.com", "e9.cdn.example.net"), T - S,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path):
    db = Store(str(tmp_path / "attr.duckdb"))
    flows = [
        Flow("p", T, T + S, 4, 6, HOST, 40000, SERVER, 443, 5, 500, initiator="src"),
        Flow("p", T + 1000, T + S, 4, 6, SERVER, 443, HOST, 40000, 7, 7000, initiator="dst"),
        Flow("p", T + 2 * S, T + 3 * S, 4, 6, OTHER, 40001, SERVER, 443, 1, 100, initiator="src"),
    ]
    names = [
        Name("p", T - S, SERVER, "api.example.com", "dns", HOST, 300, ["api.example.com"], "A"),
        Name("p", T - 3 * S, HOST, "laptop-10", "dhcp", HOST),
        Name("p", T + 2 * S + 5_000, SERVER, "sni.example.com", "sni", OTHER),
    ]
    db.ingest("b", "probe", flows, names)
    yield db
    db.close()


def test_the_host_never_takes_its_peers_name_in_either_direction(store):
    rows = store.query("host_flows", {"host": HOST}).to_pylist()
    assert [(r["direction"], r["peer_addr"], r["peer_name"]) for r in rows] == [
        ("sent", SERVER, "api.example.com"),
        ("received", SERVER, "api.example.com"),
    ]
    # seen from the server's side, the client is labelled with its own name, not the server's
    rows = store.query("host_peers", {"host": SERVER}).to_pylist()
    assert sorted((r["peer"], r["label"], r["name_source"]) for r in rows) == [
        (HOST, "laptop-10", "dhcp"), (OTHER, OTHER, ""),
    ]  # fmt: skip
    # the other client's connection is named by its own in-flow SNI, not by HOST's DNS answer
    rows = store.query("host_flows", {"host": OTHER}).to_pylist()
    assert [(r["peer_name"], r["name_source"]) for r in rows] == [("sni.example.com", "sni")]
