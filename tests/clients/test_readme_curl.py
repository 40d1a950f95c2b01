"""The README's "Try an exchange" commands, run as written with the real ``sts`` CLI and ``curl``.

The deployment is the one ``make run`` creates: ``sts init DIR --dev`` (the shipped example
configuration, a KEK and a dev issuer key). Only the port differs, because 8080 may be taken:
the broker's URL is rewritten in the configuration and in the README's commands alike. The
commands are read out of README.md, so this test fails when the README stops working.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker_harness import BrokerServer, decode_issued, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "sts" / "examples" / "example.yaml"
README_BROKER = "http://127.0.0.1:8080"
README_STS = ".venv/bin/sts"
README_CONFIG = "var/dev/sts.yaml"
STS = Path(sys.executable).parent / "sts"
CURL = shutil.which("curl")


def readme_section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def readme_block(section: str, lang: str) -> str:
    match = re.search(rf"^```{lang}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no ```{lang} block in the README section"
    return match.group(1)


def cli_env() -> dict[str, str]:
    # The CLI must work from what the README passes; no STS_* settings leak in from the runner.
    return {k: v for k, v in os.environ.items() if not k.startswith("STS_")}


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, f"the README's commands no longer contain {old!r}"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerServer, Path]]:
    """``sts init DIR --dev`` through the CLI, then the broker serving DIR/sts.yaml on a free port."""
    base = tmp_path_factory.mktemp("readme")
    subprocess.run([str(STS), "init", "dev", "--dev"], cwd=base, env=cli_env(), check=True, capture_output=True, timeout=60)
    directory = base / "dev"
    text = (directory / "sts.yaml").read_text()
    # `make run` serves the example configuration unchanged.
    assert yaml.safe_load(text) == yaml.safe_load(EXAMPLE.read_text())
    port = free_port()
    config = yaml.safe_load(replace_once(text, "127.0.0.1:8080", f"127.0.0.1:{port}"))
    # BrokerServer writes the rewritten copy over DIR/sts.yaml, next to dev/issuer.jwks.json
    # which the configuration names relative to itself; the KEK is the one `sts init` wrote.
    server = BrokerServer(config, workdir=directory, database_url=f"sqlite:///{base / 'sts.db'}", port=port,
                          settings={"kek": (directory / "kek").read_text().strip()}).start()
    try:
        yield server, directory
    finally:
        server.stop()


def run_readme_commands(server: BrokerServer, directory: Path, edit: tuple[str, str] | None) -> dict[str, Any]:
    script = readme_block(readme_section("Try an exchange"), "sh")
    script = replace_once(script, README_STS, shlex.quote(str(STS)))
    script = replace_once(script, README_CONFIG, shlex.quote(str(directory / "sts.yaml")))
    script = replace_once(script, README_BROKER, server.url)
    if edit is not None:
        script = replace_once(script, *edit)
    done = subprocess.run(["sh", "-eu", "-c", script], check=False, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_readme_exchange_answer(deployment: tuple[BrokerServer, Path]) -> None:
    server, directory = deployment
    answer = run_readme_commands(server, directory, None)

    documented = json.loads(readme_block(readme_section("Try an exchange"), "json"))
    assert set(answer) == set(documented)
    for name in ("issued_token_type", "token_type", "scope"):
        assert answer[name] == documented[name], name
    # The dev token lives 600 s and the exchange never outlives it (cap_to_subject_lifetime).
    assert documented["expires_in"] - 5 <= answer["expires_in"] <= documented["expires_in"]
    # "The downstream service verifies the token with the broker's keys at .../jwks".
    header, claims = decode_issued(server, answer["access_token"])
    assert header["alg"] == "ES256" and answer["access_token"].startswith(documented["access_token"][:20])
    assert claims["aud"] == "https://vector.example.com" and claims["scope"] == "read"
    assert claims["sub"] == "local-dev:agent-1" and claims["iss"] == server.url
    with server.client() as c:
        metadata = c.get("/.well-known/oauth-authorization-server").json()
    assert metadata["token_endpoint"] == f"{server.url}/token" and metadata["jwks_uri"] == f"{server.url}/jwks"


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize(
    ("edit", "error"),
    [
        pytest.param(("-d scope=read", "-d scope=admin"), "invalid_scope", id="scope-admin"),
        pytest.param(("audience=https://vector.example.com", "audience=https://other.example.com"), "invalid_target",
                     id="other-audience"),
    ],
)
def test_readme_refusals(deployment: tuple[BrokerServer, Path], edit: tuple[str, str], error: str) -> None:
    server, directory = deployment
    section = readme_section("Try an exchange")
    assert f'"error":"{error}"' in section or f"`{error}`" in section
    answer = run_readme_commands(server, directory, edit)
    assert answer["error"] == error
    assert "access_token" not in answer
