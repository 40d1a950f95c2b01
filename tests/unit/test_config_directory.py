"""A configuration split over a directory of YAML files (sts.config.sources)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from sts.config.loader import ConfigInvalid, check_config, load_config, parse_document
from sts.config.sources import ConfigSource, files_of_document, latest_mtime, read_source

EXAMPLE = Path(__file__).resolve().parents[2] / "sts" / "examples" / "trust"

ROOT = """\
issuer: https://sts.example.com
tokens: {max_lifetime: 3600}
"""
GITHUB = """\
issuers:
  - name: github
    issuer: https://token.actions.githubusercontent.com
    preset: github-actions
    audiences: [https://sts.example.com]
"""
GRANTS_A = """\
grants:
  - name: a
    match: {identity: "github:1/2"}
    targets: [{audience: vault}]
"""
GRANTS_B = """\
grants:
  - name: b
    match: {identity: "github:1/3"}
    targets: [{audience: db}]
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def test_directory_merges_lists_in_file_order(tmp_path: Path) -> None:
    d = write(tmp_path / "cfg", {"sts.yaml": ROOT, "issuers/github.yaml": GITHUB,
                                 "grants/b.yaml": GRANTS_B, "grants/a.yml": GRANTS_A})
    loaded = load_config(d)
    assert [g.name for g in loaded.config.grants] == ["a", "b"]
    assert loaded.config.tokens.max_lifetime == 3600
    assert loaded.source is not None and loaded.source.kind == "directory"
    assert [name for name, _ in loaded.source.files] == ["sts.yaml", "grants/a.yml", "grants/b.yaml", "issuers/github.yaml"]
    # The same content as one file gives the same model; the version is that of the document.
    single = write(tmp_path, {"one.yaml": ROOT + GITHUB + GRANTS_A + GRANTS_B.replace("grants:\n", "")})
    assert load_config(single / "one.yaml").config == loaded.config
    assert loaded.version == loaded.source.version != load_config(single / "one.yaml").version
    # The stored document gives the files back.
    doc = loaded.source.document_bytes.decode()
    assert [n for n, _ in files_of_document(doc, "directory")] == [n for n, _ in loaded.source.files]
    assert json.loads(doc)["files"]["grants/a.yml"] == textwrap.dedent(GRANTS_A)


def test_a_value_set_in_two_files_is_a_problem_naming_both(tmp_path: Path) -> None:
    d = write(tmp_path, {"sts.yaml": ROOT, "issuers/github.yaml": GITHUB,
                         "tokens.yaml": "tokens:\n  max_lifetime: 7200\n", "grants/a.yaml": GRANTS_A})
    [problem] = check_config(d)
    assert (problem.file, problem.line, problem.column) == ("tokens.yaml", 2, 3)
    assert problem.path == "tokens.max_lifetime"
    assert "already set in sts.yaml at line 2" in problem.message


def test_camel_and_snake_keys_are_one_key(tmp_path: Path) -> None:
    d = write(tmp_path, {"sts.yaml": ROOT + "trust_domains: []\n", "issuers.yaml": GITHUB,
                         "more.yaml": "trustDomains: []\n"})
    assert load_config(d).config.trust_domains == ()


def test_problems_name_the_file_and_its_line(tmp_path: Path) -> None:
    bad = GRANTS_B.replace('{identity: "github:1/3"}', "{identity: x, condition: 'true'}")
    d = write(tmp_path, {"sts.yaml": ROOT, "issuers/github.yaml": GITHUB, "grants/a.yaml": GRANTS_A, "grants/b.yaml": bad,
                         "grants/c.yaml": GRANTS_A})
    problems = check_config(d)
    by_file = {(p.file, p.line): p for p in problems}
    assert ("grants/b.yaml", 3) in by_file, problems
    assert "exactly one of" in by_file[("grants/b.yaml", 3)].message
    dup = [p for p in problems if "duplicate grant name" in p.message]
    assert [(p.file, p.line) for p in dup] == [("grants/c.yaml", 2)]
    with pytest.raises(ConfigInvalid):
        load_config(d)


def test_duplicate_keys_and_syntax_errors_per_file(tmp_path: Path) -> None:
    d = write(tmp_path, {"sts.yaml": ROOT + "issuer: https://other.example.com\n", "issuers.yaml": GITHUB})
    [dup] = check_config(d)
    assert (dup.file, dup.line, dup.path) == ("sts.yaml", 3, "issuer") and "duplicate key" in dup.message
    (d / "broken.yaml").write_text("grants: [\n")
    problems = check_config(d)
    assert any(p.file == "broken.yaml" and "YAML syntax error" in p.message for p in problems)


def test_hidden_entries_are_skipped_and_empty_files_add_nothing(tmp_path: Path) -> None:
    d = write(tmp_path, {"sts.yaml": ROOT, "issuers.yaml": GITHUB, "empty.yaml": "",
                         "..data/ignored.yaml": "issuer: https://ignored.example.com\n", ".hidden.yaml": "grants: 1\n",
                         "README.md": "not yaml"})
    loaded = load_config(d)
    assert loaded.config.issuer == "https://sts.example.com"
    assert [n for n, _ in read_source(d, max_bytes=1 << 20).files] == ["empty.yaml", "issuers.yaml", "sts.yaml"]


def test_a_kubernetes_configmap_mount(tmp_path: Path) -> None:
    """kubelet writes the files into a hidden timestamped directory, points ``..data`` at it and
    links every top-level entry through ``..data``; an update swaps the ``..data`` link."""
    d = tmp_path / "mount"
    write(d / "..2026_12_03_10_00_00.1", {"sts.yaml": ROOT, "issuers/github.yaml": GITHUB, "grants/a.yaml": GRANTS_A})
    (d / "..data").symlink_to("..2026_12_03_10_00_00.1")
    for name in ("sts.yaml", "issuers", "grants"):
        (d / name).symlink_to(f"..data/{name}")
    (d / "loop").symlink_to(".")  # a link back up is read once
    loaded = load_config(d)
    assert [n for n, _ in loaded.source.files] == ["sts.yaml", "grants/a.yaml", "issuers/github.yaml"]  # type: ignore[union-attr]
    assert [g.name for g in loaded.config.grants] == ["a"]
    before = latest_mtime(d)
    new = write(d / "..2026_12_03_11_00_00.2", {"sts.yaml": ROOT, "issuers/github.yaml": GITHUB, "grants/a.yaml": GRANTS_B})
    os.utime(new / "grants" / "a.yaml", (before + 5, before + 5))
    (d / "..data_tmp").symlink_to(new.name)
    os.replace(d / "..data_tmp", d / "..data")
    assert latest_mtime(d) >= before + 5
    assert [g.name for g in load_config(d).config.grants] == ["b"]


def test_relative_paths_start_at_the_directory(tmp_path: Path) -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}
    d = write(tmp_path, {"sts.yaml": ROOT, "keys/static.json": json.dumps(jwks), "issuers/static.yaml": """\
        issuers:
          - name: static
            issuer: https://static.example.com
            audiences: [sts]
            keys: {jwks_file: keys/static.json}
        """})
    assert load_config(d).static_jwks["static"] == jwks


def test_size_cap_and_empty_directory(tmp_path: Path) -> None:
    d = write(tmp_path / "big", {"a.yaml": ROOT, "b.yaml": GITHUB})
    from sts.config.sources import SourceError

    with pytest.raises(SourceError, match="too large"):
        read_source(d, max_bytes=len(ROOT) + 1)
    (tmp_path / "none").mkdir()
    [problem] = check_config(tmp_path / "none")
    assert "holds no .yaml" in problem.message


def test_mtime_follows_edits_inside_the_directory(tmp_path: Path) -> None:
    d = write(tmp_path, {"sts.yaml": ROOT, "grants/a.yaml": GRANTS_A})
    before = latest_mtime(d)
    os.utime(d / "grants" / "a.yaml", (before + 10, before + 10))
    assert latest_mtime(d) == before + 10
    assert latest_mtime(tmp_path / "missing") == 0.0


def test_parse_document_validates_without_reading_named_files(tmp_path: Path) -> None:
    source = ConfigSource("file", (("sts.yaml", (ROOT + GITHUB.replace("preset: github-actions", "keys: {jwks_file: nope.json}")).encode()),))
    cfg = parse_document(source)
    assert cfg.issuers[0].keys.jwks_file == "nope.json"
    with pytest.raises(ConfigInvalid) as exc:
        parse_document(ConfigSource("file", (("sts.yaml", b"issuer: 1\n"),)))
    assert exc.value.problems


def test_the_example_directory_loads() -> None:
    loaded = load_config(EXAMPLE)
    assert [i.name for i in loaded.config.issuers] == ["github", "gitlab"]
    assert [g.name for g in loaded.config.grants] == ["deploy"]
    assert check_config(EXAMPLE, warnings=True) == []
