"""Warnings about a configuration that loads but probably does not do what was meant.

An issuer URL is compared with a token's ``iss`` as a plain string (RFC 7519 §4.1.1, OpenID
Connect Discovery 1.0 §4.3: the issuer "MUST be identical"), so
``https://token.actions.githubusercontent.com/`` trusts nothing GitHub ever signs: its tokens
say ``https://token.actions.githubusercontent.com``. Such a URL is valid, hence a warning, not
an error. Pure functions over the raw YAML data, so they run on files that do not validate too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic.alias_generators import to_camel

from sts.config.models import Location
from sts.trust.presets import PRESETS

_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
_TITLES: Final = {"github-actions": "GitHub Actions", "gitlab": "GitLab.com"}


def _comparable(url: str) -> tuple[str, str, str] | None:
    """``url`` with the differences a person does not notice removed: letter case of scheme
    and host, an explicit default port, trailing slashes."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    host = parts.hostname.lower()
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host += f":{port}"
    return parts.scheme.lower(), host, parts.path.rstrip("/")


def _differences(url: str, known: str) -> list[str]:
    parts, known_parts = urlsplit(url), urlsplit(known)
    found: list[str] = []
    if parts.path.rstrip("/") != parts.path and known_parts.path == known_parts.path.rstrip("/"):
        found.append("a trailing slash")
    scheme_and_host = "/".join(url.split("/", 3)[:3])  # urlsplit lowercases the scheme itself
    if scheme_and_host != scheme_and_host.lower():
        found.append("letter case")
    if parts.port is not None:
        found.append("an explicit default port")
    return found or ["spelling"]


def well_known_issuer_near_miss(url: str) -> tuple[str, str, list[str]] | None:
    """``(preset name, the well-known issuer, differences)`` when ``url`` is not a preset's
    well-known issuer but differs from one only by trailing slash, letter case or default port."""
    mine = _comparable(url)
    if mine is None:
        return None
    for preset in PRESETS.values():
        for known in preset.well_known_issuers:
            if url != known and mine == _comparable(known):
                return preset.name, known, _differences(url, known)
    return None


def _get(mapping: Mapping[str, Any], key: str) -> Any:
    return mapping[key] if key in mapping else mapping.get(to_camel(key))


def issuer_url_warnings(raw: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """A warning for each ``issuers[i].issuer`` that is a near miss of a well-known issuer.
    Messages name only the well-known form, never the value from the file."""
    warnings: list[tuple[Location, str]] = []
    issuers = raw.get("issuers")
    if not isinstance(issuers, list):
        return warnings
    for i, item in enumerate(issuers):
        url = _get(item, "issuer") if isinstance(item, Mapping) else None
        if not isinstance(url, str):
            continue
        miss = well_known_issuer_near_miss(url)
        if miss is None:
            continue
        preset, known, how = miss
        warnings.append(
            (
                ("issuers", i, "issuer"),
                f"differs from the {_TITLES.get(preset, preset)} issuer {known} only by "
                + " and ".join(how)
                + "; its tokens carry exactly that string, so every one would be refused",
            )
        )
    return warnings
