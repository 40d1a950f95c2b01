"""A black-box conformance kit for OAuth 2.0 Token Exchange services (RFC 8693).

It runs every party except the service under test on loopback (an OIDC issuer, a SPIFFE bundle
endpoint), mints valid and deliberately broken subject tokens, and checks the service's answers
against RFC 8693, RFC 6749 §5, RFC 8707, RFC 8414, RFC 9068 and RFC 8725, over HTTP only.
"""

from __future__ import annotations

from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.profile import Profile, ProfileError, load_profile, parse_profile

__all__ = ["LocalIssuer", "Profile", "ProfileError", "SpiffeBundleServer", "load_profile", "parse_profile"]
