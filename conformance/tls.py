"""The kit's issuer over https, the way production issuers are served.

A token service in production mode fetches issuer keys over https only (OpenID Connect
Discovery 1.0 §4 requires https issuer URLs), so the kit can serve its ``LocalIssuer`` with a
certificate. Either the profile names a certificate and key of its own, or it names a CA file as
well and the kit creates, once, a throwaway CA there and a server certificate for the issuer's
host signed by it: the target's configuration then trusts that CA file. The files are kept, so a
target set up once keeps trusting the kit across runs (``sts conformance --prepare`` writes them).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

from conformance.issuer import server_tls_context, write_loopback_tls_files


def ensure_tls_files(cert_file: str, key_file: str, ca_file: str | None, host: str) -> bool:
    """Create a throwaway CA at ``ca_file`` and a certificate for ``host`` when the certificate or
    key is missing and a CA file is named. Returns True when files were written."""
    if Path(cert_file).exists() and Path(key_file).exists():
        return False
    if ca_file is None:
        raise FileNotFoundError(f"issuer TLS certificate {cert_file} or key {key_file} does not exist"
                                " (name issuer.tls_ca_file to have the kit create a throwaway CA)")
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = write_loopback_tls_files(tmp, "issuer", host)
        for source, dest in ((ca, ca_file), (cert, cert_file), (key, key_file)):
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    Path(key_file).chmod(0o600)
    return True


def issuer_tls_context(cert_file: str | None, key_file: str | None, ca_file: str | None,
                       host: str) -> ssl.SSLContext | None:
    """The issuer's TLS server context, or None when the profile asks for plain http."""
    if cert_file is None or key_file is None:
        return None
    ensure_tls_files(cert_file, key_file, ca_file, host)
    return server_tls_context(cert_file, key_file)
