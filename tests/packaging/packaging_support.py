"""Shared readers for the packaging tests: the repository root, the Dockerfile's
instructions, the YAML documents of the deployment files, compose interpolation, the
.dockerignore rules and the production guide's tested blocks."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_UID = 10001


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else a shell split."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :].strip()
        return json.loads(text) if text.startswith("[") else shlex.split(text)


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Instructions with continuation lines joined; ``stage`` counts FROM lines (0 before any)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out: list[Instruction] = []
    stage = 0
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, re.sub(r"\s+", " ", args).strip(), stage))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def venv_tool(name: str) -> str | None:
    """A console script installed beside this interpreter (the test extra), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def git_ignored(paths: list[str]) -> set[str]:
    """Which of ``paths`` (relative to the root) the repository's ignore rules exclude,
    whether or not they exist or are tracked."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                            capture_output=True, text=True, timeout=30)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr)
    return set(result.stdout.split())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR:?error}`` (the forms compose.yaml uses)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name}: {arg}")

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)([^}]*)\}", one, text)


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax (Go filepath.Match plus ``**``) as a regular expression
    that matches the path or any of its parent directories."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"{out}(?:/.*)?")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str], str]]:
    """(admits, pattern, text) per rule, in order."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        text = line[1:] if keep else line
        rules.append((keep, _docker_pattern(text), text))
    return rules


def in_build_context(path: str) -> bool:
    """Whether .dockerignore admits ``path`` (the last matching rule decides)."""
    included = True
    for keep, pattern, _ in dockerignore_rules():
        if pattern.fullmatch(path):
            included = keep
    return included


GUIDE = ROOT / "docs" / "production.md"
# What a reader of the guide replaces with their own values; the tests replace them too.
GUIDE_DATABASE_URL = "postgresql://sts:change-me@db.example.internal:5432/sts"
GUIDE_PORTS = ("8081", "8082")


def guide_blocks() -> dict[str, str]:
    """The ``sh`` blocks of the guide that follow a ``<!-- guide-test: NAME -->`` marker."""
    text = GUIDE.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- guide-test: (\S+) -->\n```sh\n(.*?)```", text, flags=re.S)}


def trust_test_issuer(site: Path) -> Any:
    """The guide's section 3 as a reader would do it: keep the starter's issuer and grant, but
    take the issuer's keys from a file (whose private key the test holds) instead of GitHub's
    discovery document, so that no broker fetches keys from the network."""
    from sts import jose

    key = jose.generate_private_key("ES256", kid="guide-test")
    (site / "issuer.jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
    config = yaml.safe_load((site / "sts.yaml").read_text())
    (issuer,) = config["issuers"]
    issuer["keys"] = {"jwks_file": "issuer.jwks.json"}
    (site / "sts.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return key
