"""Name → registered domain (eTLD+1) with the Public Suffix List shipped in ``publicsuffixlist``."""

from __future__ import annotations

import functools
import ipaddress

from publicsuffixlist import PublicSuffixList


@functools.cache
def _psl(private: bool) -> PublicSuffixList:
    # only_icann: the private section makes every customer of a cloud its own "domain"
    # (bucket.s3.amazonaws.com, d1.cloudfront.net); for traffic the operator is the useful key.
    return PublicSuffixList(only_icann=not private)


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1 << 18)
def registered_domain(name: str, *, private: bool = False) -> str:
    """The registered domain of ``name``: ``"a.b.googlevideo.com"`` → ``"googlevideo.com"``.

    Multi-level public suffixes count as one (``"www.foo.co.uk"`` → ``"foo.co.uk"``); the
    result is lower-case without a trailing dot. IP literals and single labels come back as
    given; a name that is itself a public suffix (``"co.uk"``) comes back normalised. Suffixes
    are the ICANN section of the list unless ``private=True`` (then ``"x.github.io"`` stays
    whole). Unicode and punycode (``xn--``) names both work, each answered in its own spelling.
    """
    if not name or "." not in name.strip(".") or _is_ip_literal(name):
        return name
    normal = name.strip().rstrip(".").lower()
    return _psl(private).privatesuffix(normal) or normal
