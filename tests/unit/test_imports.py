"""The import rules of docs/architecture.md, read from the code's own imports (every import
statement, including those inside functions), and no import cycles between gateway modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# The core: knows no wire format, no web framework, no database driver.
CORE = {
    "gateway.auth", "gateway.bus.base", "gateway.bus.memory", "gateway.changes",
    "gateway.channels", "gateway.connection", "gateway.encoding", "gateway.enrich",
    "gateway.errors",
    "gateway.events", "gateway.filters", "gateway.history", "gateway.hub", "gateway.jwks",
    "gateway.limits", "gateway.logs", "gateway.node", "gateway.publish", "gateway.router",
    "gateway.session", "gateway.settings", "gateway.sources.base", "gateway.tokens",
    "gateway.tasks.base", "gateway.tasks.config", "gateway.tasks.signing",
    "gateway.tasks.targets", "gateway.tasks.webhook",
}
PROTOCOLS = ("gateway.native", "gateway.phoenix")
OUTER = {
    "gateway.app", "gateway.server", "gateway.cli", "gateway.check", "gateway.metrics",
    "gateway.demo", "gateway.dashboard", "gateway.watch",
}
BACKENDS = (
    "gateway.sources.postgres", "gateway.sources.supabase", "gateway.sources.embedded",
    "gateway.enrich_redis",  # the shared lookup cache (gateway/enrich.py's LookupCache)
    "gateway.lease",  # the Redis lease electing a Supabase source's reader (an Election)
    "gateway.relay",  # the Redis stream carrying standbys' published events to it (a Relay)
    "gateway.tasks.jobs", "gateway.tasks.queue", "gateway.tasks.worker",  # tasks on RQ
)
WEB = ("fastapi", "starlette", "uvicorn", "websockets")
DRIVERS = ("psycopg", "redis", "realtime", "rq")
# Who may import each third-party driver or server package (by module prefix).
ALLOWED_DRIVERS = {
    "psycopg": ("gateway.sources.postgres", "gateway.sources.embedded", "gateway.check",
                "gateway.demo", "gateway.metrics"),
    "redis": ("gateway.bus.redis", "gateway.check", "gateway.enrich_redis", "gateway.lease",
              "gateway.relay", "gateway.tasks.queue", "gateway.tasks.worker"),
    "rq": ("gateway.tasks.jobs", "gateway.tasks.queue", "gateway.tasks.worker"),
    "realtime": ("gateway.sources.supabase",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(GATEWAY.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports: gateway modules resolved to the module, others by their
    top-level package."""
    found: set[str] = set()
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return {
        module if module.startswith("gateway") else module.split(".")[0] for module in found
    }


def under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_the_layout_is_what_the_rules_name() -> None:
    assert CORE | OUTER <= set(MODULES)
    for prefix in (*PROTOCOLS, "gateway.transport", "gateway.bus", "gateway.sources.postgres"):
        assert any(under(module, prefix) for module in MODULES), prefix


@pytest.mark.parametrize("name", sorted(CORE))
def test_the_core_imports_no_protocol_transport_backend_or_web_stack(name: str) -> None:
    bad = {
        module for module in imports_of(name)
        if under(module, *PROTOCOLS, "gateway.transport", *BACKENDS, *WEB, *DRIVERS)
        or module in OUTER
    }
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if under(m, *PROTOCOLS)))
def test_a_protocol_imports_the_core_and_transport_never_another_protocol(name: str) -> None:
    own = next(prefix for prefix in PROTOCOLS if under(name, prefix))
    others = [prefix for prefix in PROTOCOLS if prefix != own]
    bad = {
        module for module in imports_of(name)
        if under(module, *others, *BACKENDS, *DRIVERS, "gateway.node") or module in OUTER
    }
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if under(m, "gateway.transport")))
def test_transport_imports_no_protocol_and_no_node(name: str) -> None:
    bad = {
        module for module in imports_of(name)
        if under(module, *PROTOCOLS, *BACKENDS, *DRIVERS, "gateway.node") or module in OUTER
    }
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "name", sorted(m for m in MODULES if under(m, *BACKENDS, "gateway.bus") and m not in CORE)
)
def test_a_backend_imports_the_core_and_its_driver_only(name: str) -> None:
    bad = {
        module for module in imports_of(name)
        if under(module, *PROTOCOLS, "gateway.transport", "gateway.node", "fastapi",
                 "starlette", "uvicorn") or module in OUTER
    }
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_driver_is_imported_by_its_backend_only(driver: str) -> None:
    users = {name for name in MODULES if driver in imports_of(name)}
    assert all(under(user, *ALLOWED_DRIVERS[driver]) for user in users), sorted(users)


def test_no_import_cycles() -> None:
    graph = {name: {m for m in imports_of(name) if m in MODULES} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def printed_by(probe: str) -> str:
    """What ``probe`` prints, run in a fresh interpreter (nothing imported yet)."""
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        cwd=GATEWAY.parent,
    ).stdout.strip()


def test_serving_loads_no_optional_backend_until_configured() -> None:
    """What ``rtgw serve`` imports at start leaves Redis and RQ out (6 MB more in an idle
    process): only RTGW_BUS/RTGW_CACHE=redis or configured tasks may load them, when used."""
    probe = (
        "import sys, gateway.cli, gateway.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'rq')))"
    )
    assert printed_by(probe) == "[]"


def test_an_hs256_only_gateway_never_loads_pyjwt_or_cryptography() -> None:
    """PyJWT loads ``cryptography`` (9 MB of an idle process): only a JWKS URL may load them.
    A shared secret's tokens are minted and verified with the standard library."""
    probe = (
        "import asyncio, sys, gateway.cli, gateway.app\n"
        "from gateway.auth import AuthConfig, Verifier\n"
        "from gateway.tokens import mint_token\n"
        "secret = 'an-hs256-secret-of-more-than-32-bytes-0123'\n"
        "token = mint_token(secret, 'user-1', ['orders:read'], 60)\n"
        "claims = asyncio.run(Verifier(AuthConfig(hs256_secret=secret)).verify(token))\n"
        "assert claims.subject == 'user-1'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jwt', 'cryptography')))"
    )
    assert printed_by(probe) == "[]"
