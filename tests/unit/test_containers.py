"""The container files, checked by parsing them: no Docker engine is needed to run these tests.

docker-compose.yml is read with yaml.safe_load, the Dockerfile and .dockerignore as text.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


class MissingVariable(Exception):
    """A ``${NAME:?message}`` interpolation whose variable is unset or empty."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation, for the forms this repository uses."""

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or op in ("-", "?"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _INTERPOLATION.sub(resolve, value.replace("$$", "\0")).replace("\0", "$")


def variables_in(value: str) -> set[str]:
    return {match["name"] for match in _INTERPOLATION.finditer(value)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment``, in either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in raw)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def as_words(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def all_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, Mapping):
        return [text for key, value in node.items() for text in (str(key), *all_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in all_strings(item)]
    return []


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_postgres_and_gateway(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "gateway"} <= services.keys()
    assert services["postgres"]["image"] == "postgres:16"
    assert services["gateway"]["build"] in (".", {"context": "."})


def test_postgres_is_configured_for_logical_replication(
    services: dict[str, dict[str, Any]],
) -> None:
    command = as_words(services["postgres"]["command"])
    options = [command[i + 1] for i, word in enumerate(command[:-1]) if word == "-c"]
    assert "wal_level=logical" in options
    assert "max_replication_slots=10" in options
    assert "max_wal_senders=10" in options
    assert "max_slot_wal_keep_size=1GB" in options


def test_postgres_password_has_a_default(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["postgres"])
    assert env["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-postgres}"
    assert interpolate(env["POSTGRES_PASSWORD"], {}) == "postgres"
    assert interpolate(env["POSTGRES_PASSWORD"], {"POSTGRES_PASSWORD": "s3cret"}) == "s3cret"


def _volumes(service: Mapping[str, Any]) -> list[tuple[str, str, bool, str]]:
    """(type, source, read_only, target) for each volume, short or long syntax."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = entry["type"], entry.get("source", ""), entry["target"]
            read_only = bool(entry.get("read_only", False))
        found.append((kind, source, read_only, target))
    return found


def test_every_bind_mount_exists_in_the_repo(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    binds = 0
    for name, service in services.items():
        for kind, source, _, target in _volumes(service):
            if kind == "bind":
                binds += 1
                assert not source.startswith(("/", "~")), f"{name}: {source} is outside the repo"
                path = (REPO / source).resolve()
                assert path.is_relative_to(REPO), f"{name}: {source} is outside the repo"
                assert path.exists(), f"{name}: bind mount {source} -> {target} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
    assert binds > 0


def test_migrations_are_mounted_as_init_scripts(services: dict[str, dict[str, Any]]) -> None:
    mounts = {target: (source, ro) for _, source, ro, target in _volumes(services["postgres"])}
    source, read_only = mounts["/docker-entrypoint-initdb.d"]
    assert (REPO / source).resolve() == REPO / "supabase" / "migrations"
    assert read_only
    # The entrypoint runs *.sql in name order; the data lives in a named volume.
    assert sorted((REPO / source).glob("*.sql"))
    assert "/var/lib/postgresql/data" in mounts


def test_gateway_database_url_points_at_the_postgres_service(
    services: dict[str, dict[str, Any]],
) -> None:
    url = interpolate(environment(services["gateway"])["RTGW_DATABASE_URL"], {})
    parts = urlsplit(url)
    assert parts.scheme in ("postgresql", "postgres")
    assert parts.hostname == "postgres"
    assert parts.port == 5432
    assert parts.username == "postgres"
    assert parts.password == "postgres"  # the same default as the postgres service
    password = interpolate(
        environment(services["gateway"])["RTGW_DATABASE_URL"], {"POSTGRES_PASSWORD": "s3cret"}
    )
    assert urlsplit(password).password == "s3cret"


def test_gateway_requires_a_jwt_secret(services: dict[str, dict[str, Any]]) -> None:
    value = environment(services["gateway"])["RTGW_JWT_SECRET"]
    assert re.fullmatch(r"\$\{RTGW_JWT_SECRET:\?[^}]+\}", value), value
    with pytest.raises(MissingVariable, match="at least 32 characters"):
        interpolate(value, {})
    with pytest.raises(MissingVariable):
        interpolate(value, {"RTGW_JWT_SECRET": ""})
    assert interpolate(value, {"RTGW_JWT_SECRET": "k" * 64}) == "k" * 64


def test_gateway_listens_on_all_interfaces_behind_the_load_balancer(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = services["gateway"]
    assert environment(gateway)["RTGW_HOST"] == "0.0.0.0"
    assert "ports" not in gateway, "replicas are reached through the load balancer only"
    assert [str(port) for port in gateway["expose"]] == ["8000"]
    assert gateway["restart"] == "unless-stopped"
    assert "8000:8000" in [str(port) for port in services["loadbalancer"]["ports"]]


def test_two_replicas_share_a_redis_bus(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] >= 2
    env = environment(gateway)
    assert env["RTGW_BUS"] == "redis"
    assert urlsplit(env["RTGW_REDIS_URL"]).hostname == "redis"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in as_words(services["redis"]["healthcheck"]["test"])


def haproxy_words(load_balancer: Mapping[str, Any]) -> list[list[str]]:
    """The words of each line of the HAProxy configuration the load balancer mounts."""
    config = _mounts(load_balancer)["/usr/local/etc/haproxy/haproxy.cfg"]
    lines = (line.split("#", 1)[0].split() for line in config.read_text().splitlines())
    return [words for words in lines if words]


def test_load_balancer_checks_readiness_and_keeps_websockets_open(
    services: dict[str, dict[str, Any]],
) -> None:
    words = haproxy_words(services["loadbalancer"])
    assert ["bind", ":8000"] in words
    assert ["option", "httpchk", "GET", "/readyz"] in words
    assert ["http-check", "expect", "status", "200"] in words
    assert ["option", "forwardfor"] in words
    assert ["balance", "leastconn"] in words
    (template,) = [w for w in words if w[0] == "server-template"]
    assert template[3] == "gateway:8000" and "check" in template and "resolvers" in template
    (tunnel,) = [w for w in words if w[:2] == ["timeout", "tunnel"]]
    assert tunnel[2].endswith("h")  # WebSockets live for hours; the gateway pings every 20 s
    lb = services["loadbalancer"]
    assert lb["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_replicas_trust_the_load_balancers_network(compose: dict[str, Any]) -> None:
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    trusted = environment(compose["services"]["gateway"])["RTGW_TRUSTED_PROXIES"]
    assert trusted.split(",") == [subnet]


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    postgres = " ".join(as_words(services["postgres"]["healthcheck"]["test"]))
    assert "pg_isready" in postgres
    gateway = " ".join(as_words(services["gateway"]["healthcheck"]["test"]))
    assert "/readyz" in gateway
    assert "curl" not in gateway and "wget" not in gateway  # neither is in python:3.11-slim


def test_gateway_waits_for_a_healthy_postgres(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["gateway"]["depends_on"]
    assert isinstance(depends_on, dict), "the list form cannot wait for health"
    assert depends_on["postgres"]["condition"] == "service_healthy"


def test_every_rtgw_variable_in_compose_is_a_setting(compose: dict[str, Any]) -> None:
    names = set()
    for service in compose["services"].values():
        names |= {key for key in environment(service) if key.startswith("RTGW_")}
    for text in all_strings(compose):
        names |= {name for name in variables_in(text) if name.startswith("RTGW_")}
    assert names
    unknown = {name for name in names if name.removeprefix("RTGW_").lower() not in _fields()}
    assert not unknown, f"not fields of gateway.settings.Settings: {sorted(unknown)}"


def _fields() -> set[str]:
    return set(Settings.model_fields)


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def _arguments(keyword: str) -> list[str]:
    return [arguments for found, arguments in dockerfile_instructions() if found == keyword]


def _exec_form(arguments: str) -> list[str]:
    words = json.loads(arguments)
    assert isinstance(words, list) and all(isinstance(word, str) for word in words)
    return words


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, without its --flags."""
    copies = []
    for arguments in _arguments("COPY"):
        words = _exec_form(arguments) if arguments.startswith("[") else shlex.split(arguments)
        words = [word for word in words if not word.startswith("--")]
        assert len(words) >= 2, arguments
        copies.append((words[:-1], words[-1]))
    return copies


def _env() -> dict[str, str]:
    values = {}
    for arguments in _arguments("ENV"):
        for word in shlex.split(arguments):
            key, sep, value = word.partition("=")
            assert sep, f"use the ENV key=value form: {arguments}"
            values[key] = value
    return values


def test_dockerfile_base_image() -> None:
    froms = _arguments("FROM")
    assert froms and froms[-1].split()[0] == "python:3.11-slim"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = _arguments("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # USER comes after the last RUN that installs anything, and before CMD.
    keywords = [keyword for keyword, _ in dockerfile_instructions()]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert last_user > max(i for i, keyword in enumerate(keywords) if keyword == "RUN")
    assert last_user < keywords.index("CMD")


def test_dockerfile_healthcheck_uses_python_urllib() -> None:
    checks = _arguments("HEALTHCHECK")
    assert len(checks) == 1
    assert "http://127.0.0.1:8000/healthz" in checks[0]
    assert "urllib" in checks[0]
    assert "curl" not in checks[0] and "wget" not in checks[0]
    _, _, command = checks[0].partition("CMD ")
    words = _exec_form(command.strip())
    assert words[:2] == ["python", "-c"]
    compile(words[2], "<healthcheck>", "exec")  # valid Python


def test_dockerfile_copy_sources_exist() -> None:
    copies = _copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repo"


def test_dockerfile_copies_what_pip_install_needs() -> None:
    copied = {
        PurePosixPath(source).as_posix().rstrip("/")
        for sources, _ in _copies()
        for source in sources
    }
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", pyproject["project"]["readme"], "gateway", "channels", "supabase"}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    runs = " ".join(_arguments("RUN"))
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), runs


def test_dockerignore_keeps_local_state_out_but_not_the_sources() -> None:
    patterns = [
        line.strip().removeprefix("/").rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "negations are not checked here"

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            for p in patterns
        )

    for local in (".venv", ".git", "node_modules", "__pycache__", "artifacts", ".pytest_cache"):
        assert ignored(local), f"{local} is sent to the Docker build context"
    for sources, _ in _copies():
        for source in sources:
            assert not ignored(source.rstrip("/")), f"COPY {source} is excluded by .dockerignore"


def test_dockerfile_environment_and_port() -> None:
    env = _env()
    assert env["RTGW_HOST"] == "0.0.0.0"
    assert env["RTGW_CHANNELS"] == "/app/channels"
    unknown = {k for k in env if k.startswith("RTGW_") and k[5:].lower() not in _fields()}
    assert not unknown, f"not fields of gateway.settings.Settings: {sorted(unknown)}"
    # The channels folder is copied where RTGW_CHANNELS points.
    workdir = PurePosixPath(_arguments("WORKDIR")[-1])
    destinations = {
        (workdir / destination).as_posix().rstrip("/")
        for sources, destination in _copies()
        if any(source.rstrip("/") == "channels" for source in sources)
    }
    assert destinations == {"/app/channels"}
    assert any(port.split("/")[0] == "8000" for port in " ".join(_arguments("EXPOSE")).split())


def test_dockerfile_cmd_runs_rtgw_serve() -> None:
    commands = _arguments("CMD")
    assert len(commands) == 1
    assert _exec_form(commands[0]) == ["rtgw", "serve"]
    assert not _arguments("ENTRYPOINT")


# --- Prometheus and Grafana ---------------------------------------------------------------------


def _mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """target -> the repository file or folder bind-mounted there."""
    return {
        target: (REPO / source).resolve()
        for kind, source, _, target in _volumes(service)
        if kind == "bind"
    }


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_prometheus_scrapes_every_replica(services: dict[str, dict[str, Any]]) -> None:
    mounts = _mounts(services["prometheus"])
    config = _yaml(mounts["/etc/prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["gateway"] and discovery["type"] == "A"
    assert str(discovery["port"]) in [str(port) for port in services["gateway"]["expose"]]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = _mounts(services["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    assert urlsplit(datasource["url"]).port == 9090
    assert "9090:9090" in services["prometheus"]["ports"]

    (provider,) = _yaml(provisioning / "dashboards" / "rtgw.yml")["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = [path for target, path in mounts.items() if PurePosixPath(target).parent == folder]
    assert dashboards == [REPO / "deploy" / "grafana" / "rtgw-dashboard.json"]
    dashboard = json.loads(dashboards[0].read_text(encoding="utf-8"))
    uids = {
        panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel
    } | {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    }
    assert uids == {datasource["uid"]}
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in mounts and mounts[home] == dashboards[0]


def test_gateway_stop_grace_outlasts_the_drain(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    drain = float(environment(gateway)["RTGW_SHUTDOWN_GRACE_S"])
    stop = gateway["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) > drain
