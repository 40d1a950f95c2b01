"""The read-only admin API (docs/admin-api.md, docs/admin-openapi.yaml).

A small JSON API on a listener of its own, off unless ``STS_ADMIN_LISTEN`` is set, never on the
token port. Every request is authenticated first (:mod:`sts.admin.auth`): a bearer token read
from a file (RFC 6750 §2.1, compared in constant time) or a TLS client certificate whose SHA-256
thumbprint is allowed. Only then is the path routed (:mod:`sts.admin.app`), so an
unauthenticated caller learns nothing about which paths exist. Refusals (no or bad credentials,
an unknown path, a wrong method, a bad parameter) are audited like refused token requests, with
the note ``endpoint:admin``, and answered with fixed text.

The endpoints are thin adapters over what the broker and the command line already compute
(:mod:`sts.admin.views`): explain (``sts.explain``), the signing-key schedule
(``sts.tokens.keyring``), per-issuer key status (``sts.subject.jwks``, ``sts.spiffe.bundle_source``).
Every answer is JSON with ``Cache-Control: no-store`` and passes through
:func:`sts.admin.views.redact`, which replaces anything shaped like a token or a private key.

It sits at the HTTP layer: it may call the pipeline and the capability packages, and nothing
below it may import it (tests/unit/test_import_direction.py).
"""
