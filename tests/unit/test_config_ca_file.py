"""An issuer's ``ca_file`` in the trust configuration (sts.config.cafile and the loader): read
and checked at load, reported with the configuration's line and the CA file's line, carried to
the key source of that issuer only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from spiffe_support import WebCA, ec_key, key_pem, pem
from sts.config import ConfigInvalid, check_config, load_config
from sts.config.cafile import MAX_CA_FILE_BYTES, read_ca_file
from sts.runtime import key_source
from sts.subject.jwks import JWKSURI, Discovery

CA = WebCA()
OTHER_CA = WebCA()

CONFIG = textwrap.dedent("""\
    issuer: https://sts.example.com
    issuers:
      - name: ghes
        issuer: https://ghes.example.com/_services/token
        audiences: [https://sts.example.com]
        ca_file: {ca_file}
      - name: public
        issuer: https://token.actions.githubusercontent.com
        audiences: [https://sts.example.com]
      - name: cluster
        issuer: https://k8s.example.com
        audiences: [https://sts.example.com]
        keys:
          jwks_uri: https://k8s.example.com/openid/v1/jwks
        ca_file: {ca_file}
    grants:
      - name: g
        match: {{identity: "ghes:x"}}
        targets: [{{audience: https://api.example.com}}]
""")


def write_config(tmp_path: Path, ca_file: str = "certs/ca.pem") -> Path:
    path = tmp_path / "sts.yaml"
    path.write_text(CONFIG.format(ca_file=ca_file))
    return path


def write_ca(tmp_path: Path, content: bytes, name: str = "certs/ca.pem") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_the_ca_reaches_the_key_source_of_its_issuer_only(tmp_path: Path) -> None:
    write_ca(tmp_path, b"# the GHES root\n" + pem(CA.cert) + pem(OTHER_CA.cert))
    loaded = load_config(write_config(tmp_path))
    ghes, public, cluster = (key_source(i, loaded) for i in loaded.config.issuers)
    assert isinstance(ghes, Discovery) and ghes.ca is not None
    assert isinstance(cluster, JWKSURI) and cluster.ca == ghes.ca
    assert isinstance(public, Discovery) and public.ca is None
    # Both certificates, re-encoded: comments and other text around the blocks are dropped.
    assert ghes.ca.pem == (pem(CA.cert) + pem(OTHER_CA.cert)).decode()
    assert "# the GHES root" not in ghes.ca.pem


def test_an_absolute_path_is_taken_as_is(tmp_path: Path) -> None:
    ca = write_ca(tmp_path, pem(CA.cert), "elsewhere/root.pem")
    (tmp_path / "conf").mkdir()
    loaded = load_config(write_config(tmp_path / "conf", str(ca)))
    assert loaded.ca_certificates["ghes"] == pem(CA.cert).decode()


def test_a_changed_ca_file_changes_the_key_source_and_the_files_version(tmp_path: Path) -> None:
    write_ca(tmp_path, pem(CA.cert))
    first = load_config(write_config(tmp_path))
    write_ca(tmp_path, pem(OTHER_CA.cert))
    second = load_config(write_config(tmp_path))
    assert first.version == second.version  # the configuration file itself is the same...
    assert first.files_version != second.files_version  # ...but a reload must not skip it
    assert key_source(first.config.issuers[0], first) != key_source(second.config.issuers[0], second)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(None, "ca_file not found (a relative path starts at the configuration file's directory)",
                     id="missing"),
        pytest.param(b"", "holds no PEM certificate", id="empty"),
        pytest.param(b"just some text\n", "holds no PEM certificate", id="no-pem"),
        pytest.param(CA.cert.public_bytes(serialization.Encoding.DER), "DER is not accepted", id="der"),
        pytest.param(pem(CA.cert) + b"\n" + key_pem(ec_key()), "ca_file line 12: a private key, not a certificate",
                     id="private-key"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
                     "ca_file line 1: the certificate does not parse", id="garbage-certificate"),
        pytest.param(pem(CA.cert) + b"-----BEGIN CERTIFICATE-----\nMIIB\n", "ca_file line 11: a PEM block without",
                     id="truncated"),
        pytest.param(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "'X509 CRL' block",
                     id="crl"),
    ],
)
def test_unusable_ca_files_are_reported_with_both_lines(tmp_path: Path, content: bytes | None, needle: str) -> None:
    if content is not None:
        write_ca(tmp_path, content)
    problems = check_config(write_config(tmp_path))
    # Both issuers name the file: each is told, at its own line of the configuration.
    assert [(p.path, p.line) for p in problems] == [("issuers[0].ca_file", 6), ("issuers[2].ca_file", 15)]
    assert all(needle in p.message for p in problems), problems[0].message
    assert all("PRIVATE" not in p.message and "MII" not in p.message for p in problems)


def test_a_directory_is_not_a_ca_file(tmp_path: Path) -> None:
    (tmp_path / "certs" / "ca.pem").mkdir(parents=True)
    [first, _] = check_config(write_config(tmp_path))
    assert "cannot be read" in first.message


def test_an_oversized_ca_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = write_ca(tmp_path, b"")
    with path.open("wb") as f:
        f.truncate(MAX_CA_FILE_BYTES + 1)
    pem_text, problems = read_ca_file(path)
    assert pem_text is None and problems == [f"ca_file is larger than {MAX_CA_FILE_BYTES} bytes"]


@pytest.mark.parametrize(
    ("issuer_extra", "needle"),
    [
        pytest.param("ca_file: ' '", "ca_file must not be empty", id="blank"),
        pytest.param("ca_file: certs/ca.pem\n    keys: {jwks_file: keys.json}", "static keys are not fetched",
                     id="with-static-keys"),
    ],
)
def test_schema_rules_of_ca_file(tmp_path: Path, issuer_extra: str, needle: str) -> None:
    write_ca(tmp_path, pem(CA.cert))
    (tmp_path / "keys.json").write_text('{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}')
    text = textwrap.dedent("""\
        issuer: https://sts.example.com
        issuers:
          - name: cluster
            issuer: https://k8s.example.com
            audiences: [https://sts.example.com]
            {extra}
        """).format(extra=issuer_extra)
    path = tmp_path / "sts.yaml"
    path.write_text(text)
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert any(needle in p.message and p.path.startswith("issuers[0]") for p in info.value.problems), info.value
