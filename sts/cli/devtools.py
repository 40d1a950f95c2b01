"""``sts init`` and ``sts dev``: a new deployment's files, and a local issuer for trying it.

The dev issuer is a key pair on disk whose public half the example configuration trusts as a
static JWKS. It exists so that a newcomer can run an exchange within a minute of ``make run``;
production configurations trust real issuers (GitHub, Kubernetes, GitLab, clouds, SPIRE).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from importlib import resources
from pathlib import Path

import click
import yaml

from sts import jose

DEV_ISSUER_KEY = "dev/issuer.pem"
DEV_ISSUER_JWKS = "dev/issuer.jwks.json"
DEV_ISSUER_KID = "dev-issuer-1"


def example_config_text() -> str:
    return resources.files("sts").joinpath("examples/example.yaml").read_text()


def production_starter(issuer: str) -> dict[str, object]:
    """A configuration that is valid outside dev mode: trust GitHub Actions OIDC tokens minted
    for this broker, and let one repository (by its immutable ids) read one API."""
    return {
        "issuer": issuer,
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {"allow_public": True},
        "issuers": [{
            "name": "github",
            "issuer": "https://token.actions.githubusercontent.com",
            "preset": "github-actions",
            "audiences": [issuer],
            "keys": {"discovery": True},
            "claim_validation_rules": [
                {"expression": 'claims.repository_owner == "example-org"', "message": "only example-org repositories"},
            ],
        }],
        "grants": [{
            "name": "example-deploy",
            "issuers": ["github"],
            "match": {"identity": "github:123456/7891011"},
            "targets": [{"audience": "https://api.example.com", "scopes": ["read"], "default_scopes": ["read"]}],
            "default_target": "https://api.example.com",
        }],
    }


def _write(path: Path, data: str | bytes, *, force: bool, mode: int = 0o644) -> bool:
    if path.exists() and not force:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    path.chmod(mode)
    return True


def init_directory(directory: Path, *, issuer: str, dev: bool, force: bool) -> list[Path]:
    """Write ``sts.yaml``, a fresh ``kek`` and, with ``dev``, a dev issuer key and JWKS."""
    created: list[Path] = []
    if dev:
        config = yaml.safe_load(example_config_text())
        config["issuer"] = issuer
        # The dev issuer mints tokens for this broker: its accepted audience follows the issuer.
        for trusted in config.get("issuers", []):
            trusted["audiences"] = [issuer]
    else:
        config = production_starter(issuer)
    text = "# Starter configuration; see docs/configuration.md for every field.\n" + yaml.safe_dump(config, sort_keys=False)
    if dev and config == yaml.safe_load(example_config_text()):
        text = example_config_text()  # keep the example's explanatory comments
    if _write(directory / "sts.yaml", text, force=force):
        created.append(directory / "sts.yaml")
    kek = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    if _write(directory / "kek", kek + "\n", force=force, mode=0o600):
        created.append(directory / "kek")
    if dev:
        key_path = directory / DEV_ISSUER_KEY
        if force or not key_path.exists():
            key = jose.generate_private_key("ES256", kid=DEV_ISSUER_KID)
            _write(key_path, jose.private_key_to_pem(key), force=True, mode=0o600)
            _write(directory / DEV_ISSUER_JWKS, json.dumps({"keys": [key.public_jwk()]}, indent=2) + "\n", force=True)
            created += [key_path, directory / DEV_ISSUER_JWKS]
    return created


def mint_dev_token(key_path: Path, *, issuer: str, subject: str, audience: str, lifetime: int, extra: dict[str, object]) -> str:
    key = jose.private_key_from_pem(key_path.read_bytes(), "ES256", DEV_ISSUER_KID)
    now = int(time.time())
    claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex, **extra}
    return jose.sign(claims, key, typ="JWT")


@click.group()
def dev() -> None:
    """Local development helpers (never needed in production)."""


@dev.command("mint")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--issuer-name", default="local-dev", show_default=True)
@click.option("--sub", "subject", default="agent-1", show_default=True)
@click.option("--claim", "claims", multiple=True, help="extra claim NAME=VALUE (VALUE parsed as JSON when it can be)")
@click.option("--lifetime", default=600, show_default=True)
def dev_mint(config_path: Path, issuer_name: str, subject: str, claims: tuple[str, ...], lifetime: int) -> None:
    """Mint a subject token from the dev issuer that CONFIG trusts."""
    config = yaml.safe_load(config_path.read_text())
    issuer = next((i for i in config.get("issuers", []) if i.get("name") == issuer_name), None)
    if issuer is None:
        raise click.ClickException(f"no issuer named {issuer_name!r} in {config_path}")
    extra: dict[str, object] = {}
    for item in claims:
        name, _, raw = item.partition("=")
        try:
            extra[name] = json.loads(raw)
        except json.JSONDecodeError:
            extra[name] = raw
    token = mint_dev_token(config_path.parent / DEV_ISSUER_KEY, issuer=issuer["issuer"], subject=subject,
                           audience=issuer["audiences"][0], lifetime=lifetime, extra=extra)
    click.echo(token)
