"""Local fakes of model providers' token endpoints, written from their public documentation.

Each fake is a real HTTP server on 127.0.0.1 that checks a token request exactly as its
provider documents it (method, path, content type, the set of fields and their values), then
verifies the assertion in it the way the provider does (signature against the broker's JWKS,
``kid`` and ``alg`` in the header, ``iss``, ``aud``, ``sub``, ``iat``, ``exp``), and answers
with the provider's documented success or error body. Which page and revision each follows
is in its module docstring and in docs/providers/README.md.

A fake counts the token requests it answered, can be switched to be down (HTTP 503), slow
(longer than the broker's timeout), refusing (its documented error) or to hand out short
tokens, and mints a distinct token per provider identity so tests can tell them apart.
"""

from provider_fakes.anthropic import FakeAnthropic
from provider_fakes.base import FakeProvider
from provider_fakes.entra import FakeEntra
from provider_fakes.google import FakeGoogleSts
from provider_fakes.openai import FakeOpenAI
from provider_fakes.openrouter import FakeOpenRouter

__all__ = ["FakeAnthropic", "FakeEntra", "FakeGoogleSts", "FakeOpenAI", "FakeOpenRouter", "FakeProvider"]
