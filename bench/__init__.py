"""The broker's benchmark: a floor app, a local OIDC issuer, load generators and the orchestrator.

``python -m bench.run`` (``make bench``) measures the real broker against a minimal ASGI floor in
the same run; ``docs/performance.md`` explains the method and keeps the latest table.
"""
