"""``sts probe ready|live``: ask the broker on this host whether it is ready or alive.

For container health checks (the image's ``HEALTHCHECK``, a compose ``healthcheck``, an exec
probe): the probe reads the same ``STS_HOST``, ``STS_PORT`` and ``STS_TLS_CERT`` settings as
``sts serve``, so it follows the configured port and scheme instead of assuming 8080 and http.
``ready`` asks ``/readyz`` (database answers, signing keys loaded), ``live`` asks ``/healthz``
(the process serves HTTP). Exit 0: yes; 1: no; 2: a setting is unusable.

Only the standard library does the HTTP request: a health check runs every few seconds and
must stay cheap and unable to hang (one request, a timeout, no redirects, no retries).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import sys
from dataclasses import dataclass

import click

PATHS = {"ready": "/readyz", "live": "/healthz"}


@dataclass(frozen=True)
class ProbeTarget:
    """Where the local broker answers: scheme, a connectable host and the port."""

    scheme: str
    host: str
    port: int

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"


def probe_target(host: str, port: int, tls: bool) -> ProbeTarget:
    """The address to probe for a broker bound to ``host:port`` (pure).

    A wildcard bind address (``0.0.0.0``, ``::``, empty) is not an address one can connect
    to: the probe then asks the loopback address of the same family, which such a bind also
    serves.
    """
    bound = host.strip().strip("[]")
    if bound in ("", "0.0.0.0", "*"):
        bound = "127.0.0.1"
    else:
        try:
            if ipaddress.ip_address(bound).is_unspecified:
                bound = "::1"
        except ValueError:
            pass  # a host name: connect to it as configured
    return ProbeTarget("https" if tls else "http", bound, port)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    url: str
    status: int | None
    error: str | None


def _tls_context() -> ssl.SSLContext:
    # The probe talks to its own process over loopback, where the broker's certificate (made
    # for the public name) can never match the address: it checks that HTTPS answers, not who
    # answers. It sends nothing secret.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def run_probe(target: ProbeTarget, path: str, timeout: float) -> ProbeResult:
    """One GET of ``path``; ``ok`` only for a 200 answer."""
    url = target.url(path)
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=_tls_context())
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "sts-probe", "Connection": "close"})
        response = conn.getresponse()
        response.read(64 * 1024)
        return ProbeResult(response.status == 200, url, response.status, None)
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, url, None, _describe(exc))
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc.__class__.__name__})"
    return str(exc) or exc.__class__.__name__


@click.command("probe")
@click.argument("check", type=click.Choice(sorted(PATHS)))
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(min=0.1), help="seconds to wait for the answer")
@click.option("--json", "as_json", is_flag=True)
def probe(check: str, timeout: float, as_json: bool) -> None:
    """Ask the local broker whether it is ready (/readyz) or alive (/healthz); exit 1 if not.

    Follows STS_HOST, STS_PORT and STS_TLS_CERT (https when set), like `sts serve`.
    """
    from sts.settings import load_settings

    # A bad STS_* value raises SettingsError: the `sts` group reports it in one line, exit 2.
    settings = load_settings()
    target = probe_target(settings.host, settings.port, settings.tls_cert is not None)
    result = run_probe(target, PATHS[check], timeout)
    word = {"ready": ("ready", "not ready"), "live": ("live", "not live")}[check][0 if result.ok else 1]
    detail = f"HTTP {result.status}" if result.status is not None else result.error
    if as_json:
        click.echo(json.dumps({"check": check, "ok": result.ok, "url": result.url, "status": result.status, "error": result.error}))
    else:
        click.echo(f"{word}: {result.url} ({detail})")
    sys.exit(0 if result.ok else 1)

