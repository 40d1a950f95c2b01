"""Trust configurations for the benchmark: small (1 issuer, 10 grants) and large (500, 10,000).

The measured traffic always comes from one real issuer found through OIDC discovery on
loopback (``allow_insecure_http`` with dev mode). The large configuration adds 499 issuers with
static ``jwks`` (no servers needed) and 9,990 grants for them, while the measured issuer keeps
exactly the same 10 grants as in the small one: any extra cost per exchange is then the price
of configuration size alone, which the hot path must not pay (lookups by issuer and identity
are to be indexed, not scanned).

Grants mix the three match kinds a real deployment has: literal identities (most), anchored
patterns and CEL conditions. Every grant names its issuer, as a careful operator would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench import jwtutil

BROKER_ISSUER = "https://sts.bench.example"
TARGET = "https://api.bench.example"
SUBJECT_AUDIENCE = BROKER_ISSUER
MEASURED_ISSUER = "bench"
# The measured tokens are spread over these repositories; each has its own literal grant.
REPOSITORIES = tuple(f"acme/app-{i}" for i in range(5))


def subject_of(repository: str) -> str:
    return f"repo:{repository}:ref:refs/heads/main"


def subject_claims(index: int) -> dict[str, Any]:
    """Claims of the ``index``-th pooled subject token (GitHub-Actions-like)."""
    repository = REPOSITORIES[index % len(REPOSITORIES)]
    return {
        "aud": SUBJECT_AUDIENCE,
        "sub": subject_of(repository),
        "repository": repository,
        "repository_owner": "acme",
        "ref": "refs/heads/main",
        "jti": f"bench-{index}",
    }


def _mapping() -> dict[str, Any]:
    return {
        "claim_validation_rules": [
            {"expression": 'claims.repository_owner == "acme"', "message": "repository owner must be acme"}
        ],
        "claim_mappings": {
            "identity": "claims.sub",
            "attributes": {"repository": "claims.repository", "ref": "claims.ref"},
        },
    }


def _grant(name: str, issuer: str, kind: str, key: str, audience: str) -> dict[str, Any]:
    if kind == "identity":
        match: dict[str, str] = {"identity": key}
    elif kind == "pattern":
        match = {"identity_pattern": f"^repo:{key}/lib-[0-9]+:ref:refs/tags/v.*$"}
    else:
        match = {"condition": f'attributes.repository == "{key}/ops" && attributes.ref == "refs/heads/prod"'}
    return {
        "name": name,
        "issuers": [issuer],
        "match": match,
        "targets": [{"audience": audience, "scopes": ["read", "write"], "default_scopes": ["read"]}],
        "lifetime": 900,
    }


def _measured_grants() -> list[dict[str, Any]]:
    """The measured issuer's 10 grants: 5 that the pooled tokens match, 5 that they do not."""
    grants = [
        _grant(f"deploy-app-{i}", MEASURED_ISSUER, "identity", subject_of(repo), TARGET)
        for i, repo in enumerate(REPOSITORIES)
    ]
    grants += [
        _grant("deploy-svc-0", MEASURED_ISSUER, "identity", subject_of("acme/svc-0"), "https://svc-0.bench.example"),
        _grant("deploy-svc-1", MEASURED_ISSUER, "identity", subject_of("acme/svc-1"), "https://svc-1.bench.example"),
        _grant("release-libs", MEASURED_ISSUER, "pattern", "acme", "https://pkg.bench.example"),
        _grant("release-tools", MEASURED_ISSUER, "pattern", "acme-tools", "https://pkg.bench.example"),
        _grant("ops-prod", MEASURED_ISSUER, "condition", "acme", "https://ops.bench.example"),
    ]
    return grants


def build_config(issuer_url: str, *, issuers: int = 1, grants: int = 10) -> dict[str, Any]:
    """A configuration document with ``issuers`` issuers and ``grants`` grants in total."""
    measured = {
        "name": MEASURED_ISSUER,
        "issuer": issuer_url,
        "audiences": [SUBJECT_AUDIENCE],
        "keys": {"discovery": True},
        "algorithms": ["RS256", "ES256"],
        "allow_insecure_http": True,
        **_mapping(),
    }
    issuer_docs: list[dict[str, Any]] = [measured]
    grant_docs = _measured_grants()[: max(0, grants)]
    others = issuers - 1
    if others > 0:
        # Static keys: one distinct P-256 key per issuer (cheap to generate, realistic to load).
        for n in range(others):
            key = jwtutil.generate_key("ES256")
            issuer_docs.append(
                {
                    "name": f"tenant-{n}",
                    "issuer": f"https://tenant-{n}.issuers.bench.example",
                    "audiences": [SUBJECT_AUDIENCE],
                    "keys": {"jwks": {"keys": [jwtutil.public_jwk(key, f"tenant-{n}-1", "ES256")]}},
                    "algorithms": ["ES256"],
                    **_mapping(),
                }
            )
        remaining = grants - len(grant_docs)
        for g in range(max(0, remaining)):
            n = g % others
            owner = f"tenant{n}"
            # 80% literal identities, 15% anchored patterns, 5% CEL conditions.
            kind = "condition" if g % 20 == 0 else "pattern" if g % 20 < 4 else "identity"
            match_key = subject_of(f"{owner}/repo-{g}") if kind == "identity" else owner
            target = f"https://svc-{g}.tenant-{n}.bench.example"
            grant_docs.append(_grant(f"t{n}-g{g}", f"tenant-{n}", kind, match_key, target))
    return {
        "issuer": BROKER_ISSUER,
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {"allow_public": True},
        "issuers": issuer_docs,
        "grants": grant_docs,
    }


def write_config(path: Path, issuer_url: str, *, issuers: int, grants: int) -> Path:
    doc = build_config(issuer_url, issuers=issuers, grants=grants)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh, Dumper=dumper, sort_keys=False, width=200)
    return path


CONFIGS = {"small": (1, 10), "large": (500, 10_000)}
