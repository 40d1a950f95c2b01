"""compose.yaml: PostgreSQL, a one-shot migration, the KEK made readable by the image user, two
broker replicas with a health check that follows the configured port, and a load balancer.

``docker compose config`` is not available where the tests run: the file is read as YAML (with
its anchors and merge keys resolved) and its structure asserted.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from packaging_support import IMAGE_UID, ROOT, interpolate, project_version

IMAGE = f"workload-sts:{project_version()}"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _brokers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("image") == IMAGE and svc.get("command") in (None, ["serve"]) and "entrypoint" not in svc}


def _volume_source(spec: str) -> tuple[str, str, list[str]]:
    source, target, *options = spec.split(":")
    return source, target, options


def test_every_service_uses_one_image_built_once(compose: dict[str, Any]) -> None:
    ours = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("workload-sts")}
    assert {s["image"] for s in ours.values()} == {IMAGE}
    assert [n for n, s in ours.items() if "build" in s] == ["migrate"]


def test_two_broker_replicas_wait_for_migration_and_kek(compose: dict[str, Any]) -> None:
    brokers = _brokers(compose)
    assert len(brokers) >= 2, sorted(brokers)
    for svc in brokers.values():
        assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["kek"] == {"condition": "service_completed_successfully"}


def test_migration_is_a_one_shot_db_upgrade_after_postgres(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "restart" not in migrate  # a one-shot must be allowed to finish
    assert migrate["environment"]["STS_DATABASE_URL"] == _brokers(compose)["broker-1"]["environment"]["STS_DATABASE_URL"]


def test_database_url_names_the_postgres_service_and_its_credentials(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    env = {"STS_DB_PASSWORD": "s3cret"}
    url = interpolate(_brokers(compose)["broker-1"]["environment"]["STS_DATABASE_URL"], env)
    user, db = postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]
    assert url == f"postgresql://{user}:s3cret@postgres:5432/{db}"
    assert interpolate(postgres["environment"]["POSTGRES_PASSWORD"], env) == "s3cret"
    with pytest.raises(KeyError, match="STS_DB_PASSWORD"):
        interpolate(postgres["environment"]["POSTGRES_PASSWORD"], {})  # required, with a message
    assert "ports" not in postgres
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_brokers_read_the_kek_copied_for_the_image_user(compose: dict[str, Any]) -> None:
    kek = compose["services"]["kek"]
    # The copy: from the secret (a bind mount of the 0600 file sts init wrote) to a volume file
    # owned by the image's uid, mode 0400; as root, without network, with only copy capabilities.
    entry = kek["entrypoint"]
    assert entry[0] == "install"
    assert entry[entry.index("-o") + 1] == str(IMAGE_UID) and entry[entry.index("-g") + 1] == str(IMAGE_UID)
    assert entry[entry.index("-m") + 1] == "0400"
    source, destination = entry[-2], entry[-1]
    assert source == "/run/secrets/kek" and kek["secrets"] == ["kek"]
    assert interpolate(compose["secrets"]["kek"]["file"], {}) == "./deploy/site/kek"
    assert kek["user"] == "0:0" and kek["network_mode"] == "none"
    assert kek["cap_drop"] == ["ALL"] and set(kek["cap_add"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
    (volume, mount, _), = [_volume_source(v) for v in kek["volumes"]]
    assert destination.startswith(mount + "/")
    for svc in _brokers(compose).values():
        kek_file = svc["environment"]["STS_KEK_FILE"]
        assert kek_file == destination
        assert (volume, mount, ["ro"]) in [_volume_source(v) for v in svc["volumes"]]
        assert "STS_KEK" not in svc["environment"]


def test_broker_health_check_follows_port_and_scheme(compose: dict[str, Any]) -> None:
    for svc in _brokers(compose).values():
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "sts", "probe", "ready"]
        assert not any(re.search(r"\d{2,5}|https?:", part) for part in test[4:]), test
        assert svc["environment"]["STS_PORT"].isdigit()


def test_brokers_are_hardened_and_write_only_to_tmp(compose: dict[str, Any]) -> None:
    for name in [*_brokers(compose), "migrate"]:
        svc = compose["services"][name]
        assert svc["read_only"] is True, name
        assert svc["tmpfs"] == ["/tmp"], name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "user" not in svc, name  # the image's uid 10001
        for spec in svc.get("volumes", []):
            assert _volume_source(interpolate(spec, {}))[2] == ["ro"], (name, spec)


def test_site_directory_is_mounted_as_the_configuration(compose: dict[str, Any]) -> None:
    for svc in _brokers(compose).values():
        assert svc["environment"]["STS_CONFIG"] == "/etc/sts/sts.yaml"
        mounts = {_volume_source(interpolate(v, {}))[1]: _volume_source(interpolate(v, {}))[0] for v in svc["volumes"]}
        assert mounts["/etc/sts"] == "./deploy/site"


def test_load_balancer_sends_to_every_broker_on_its_port(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    brokers = _brokers(compose)
    assert {name: {"condition": "service_healthy"} for name in brokers} == lb["depends_on"]
    (conf_spec,) = lb["volumes"]
    conf_path, target, _ = _volume_source(conf_spec)
    assert target == "/etc/nginx/nginx.conf"
    conf = (ROOT / conf_path).read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", conf, flags=re.M)
    assert sorted(servers) == sorted((name, svc["environment"]["STS_PORT"]) for name, svc in brokers.items())
    assert re.search(r"^\s*listen\s+8080;", conf, flags=re.M)
    assert lb["ports"] == ["${STS_LISTEN:-127.0.0.1:8080}:8080"]


def test_postgres_has_no_route_out(compose: dict[str, Any]) -> None:
    assert compose["services"]["postgres"]["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True
