"""docs/authorization-details.md works as written: its configuration loads and decides as the
page says, and its MCP server check accepts and refuses real tokens from a running broker."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from sts.config.loader import load_config
from sts.subject.model import VerifiedSubject
from sts.trust.authz_details import DetailsGranted
from sts.trust.policy import Allow
from test_rar_txn import DETAIL, MCP, rar_txn_config, subject

DOC = Path(__file__).resolve().parents[2] / "docs" / "authorization-details.md"


def block(language: str, first_line: str | None = None) -> str:
    for text in re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S):
        if first_line is None or text.startswith(first_line):
            return text
    raise AssertionError(f"no {language} block in {DOC.name}")


def test_the_documented_configuration_decides_as_described(tmp_path: Path) -> None:
    path = tmp_path / "sts.yaml"
    path.write_text(block("yaml", "# example: mcp"))
    loaded = load_config(path)
    claims = {"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:ai:research-agent",
              "aud": "sts.example.com"}
    mapped = loaded.compiled.mapping_for("cluster").map_identity(VerifiedSubject("cluster", claims["iss"], claims["sub"],
                                                                                  claims, 0.0, "00"))
    identity = mapped.identity
    assert identity.identity == "k8s:ai/research-agent"
    decision = loaded.compiled.policy.decide(identity=identity, claims=claims, request_audiences=(),
                                             request_resources=("https://mcp.example.com/tools/search",),
                                             requested_scopes=("invoke",), actor=None)
    assert isinstance(decision, Allow) and decision.authorization_details is not None
    curl = block("sh")
    requested = json.loads(re.search(r"authorization_details=(\[.*\])'", curl).group(1))  # type: ignore[union-attr]
    result = decision.authorization_details.grant(requested, identity=identity.identity, issuer="cluster",
                                                  attributes=identity.attributes, claims=claims,
                                                  target=decision.target, scopes=decision.scopes)
    assert isinstance(result, DetailsGranted)
    documented = json.loads(block("json", "{\n  \"access_token\""))["authorization_details"]
    assert list(result.details) == documented
    limited = decision.authorization_details.grant([{**requested[0], "max_results": 5}], identity=identity.identity,
                                                   issuer="cluster", attributes=identity.attributes, claims=claims,
                                                   target=decision.target, scopes=decision.scopes)
    assert isinstance(limited, DetailsGranted)


@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(rar_txn_config(port, issuer, replay_issuer), workdir=tmp_path_factory.mktemp("rar-docs"),
                          database_url=database_url, port=port).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_documented_mcp_server_check(live: BrokerServer, issuer: LocalIssuer) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block("python"), str(DOC), "exec"), namespace)  # noqa: S102 - the page's own example
    namespace["BROKER"], namespace["RESOURCE"] = live.url, MCP
    authorize = namespace["authorize_tool_call"]
    with live.client() as c:
        jwks = c.get("/jwks").json()

    r = live.exchange(subject(issuer), resource=MCP, scope="invoke", authorization_details=json.dumps([DETAIL]))
    token = r.json()["access_token"]
    assert authorize(token, jwks, "search")["sub"] == "wl:agent-1"
    with pytest.raises(PermissionError):
        authorize(token, jwks, "shell")
    with pytest.raises(PermissionError):
        authorize(token, jwks, "search", action="delete")
    without = live.exchange(subject(issuer), resource=MCP, scope="invoke").json()["access_token"]
    with pytest.raises(PermissionError):
        authorize(without, jwks, "search")
    with pytest.raises(PermissionError):  # a token for another resource
        other = live.exchange(subject(issuer), audience="https://vector.example.com").json()["access_token"]
        authorize(other, jwks, "search")
    with pytest.raises(PermissionError):  # tampered
        authorize(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), jwks, "search")
