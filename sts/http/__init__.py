"""The HTTP layer of the token endpoint: a raw ASGI handler for ``POST /token`` and what it needs
(a strict form decoder, the uvicorn protocol that answers half-closed requests).

Everything else the broker serves (metadata, JWKS, health) stays on Starlette: those answers are
rare and cacheable, while every exchange pays for each object built on its path.
"""
