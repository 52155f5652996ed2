"""Real Postgres for tests: throwaway databases on a shared server, and private servers a test may stop.

* `throwaway_database`: a database, an owner role (not a superuser: superusers ignore row-level
  security) and an application role with unique names, made with the superuser DSN in
  VOICEAI_TEST_POSTGRES_DSN (default: postgres on 127.0.0.1:5432, trust auth) and dropped afterwards.
  Skips the test when no server answers.
* `PrivatePostgres`: a server of the test's own (initdb + pg_ctl, trust auth, a free loopback port,
  its unix socket in its own folder), for tests that stop and restart the database mid-test. Needs
  the Postgres server binaries (VOICEAI_TEST_PG_BIN, else initdb on PATH, else
  /usr/lib/postgresql/<newest>/bin). Postgres refuses to run as root, so under root the commands run
  as the ``postgres`` OS user (VOICEAI_TEST_PG_OS_USER), in a folder under the system temp dir that
  user can reach (pytest's tmp_path is private to root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from voiceai.supervisor import free_port

PG_DSN = os.environ.get("VOICEAI_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass(frozen=True)
class PgDatabase:
    """A throwaway database on the server at ``server_dsn``: ``owner`` owns it and runs the migrations,
    ``app_role`` is the application (created by migration 0001)."""

    server_dsn: str
    name: str
    owner: str
    app_role: str

    def url(self, role: str, driver: str = "asyncpg") -> str:
        """A SQLAlchemy URL as ``role``; ``driver=""`` gives the plain ``postgresql://`` an operator pastes."""
        drivername = f"postgresql+{driver}" if driver else "postgresql"
        base = make_url(self.server_dsn).set(drivername=drivername, username=role, password=None, database=self.name)
        return base.render_as_string(hide_password=False)

    def connect(self, role: str) -> psycopg.Connection:
        """A raw psycopg connection as ``role``."""
        return psycopg.connect(self.url(role, ""))


def create_database(superuser_dsn: str) -> PgDatabase:
    """Creates the owner role (CREATEROLE: migration 0001 creates the application role) and the database."""
    suffix = uuid.uuid4().hex[:12]
    db = PgDatabase(server_dsn=superuser_dsn, name=f"voiceai_test_{suffix}", owner=f"voiceai_test_owner_{suffix}",
                    app_role=f"voiceai_test_app_{suffix}")
    with psycopg.connect(superuser_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE ROLE "{db.owner}" LOGIN CREATEROLE')
        admin.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.owner}"')
    return db


def drop_database(db: PgDatabase) -> None:
    """Drops the database and both roles (roles are cluster-wide, so they would outlive the database)."""
    with psycopg.connect(db.server_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{db.app_role}"')
        admin.execute(f'DROP ROLE IF EXISTS "{db.owner}"')


@contextmanager
def throwaway_database(superuser_dsn: str = PG_DSN) -> Iterator[PgDatabase]:
    """A fresh database for one test, dropped afterwards; skips the test when no server answers."""
    try:
        psycopg.connect(superuser_dsn, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no Postgres at {superuser_dsn} ({exc}); start one or set VOICEAI_TEST_POSTGRES_DSN to a "
                    "superuser DSN")
    db = create_database(superuser_dsn)
    try:
        yield db
    finally:
        drop_database(db)


def _pg_bin_dir() -> Path | None:
    if os.environ.get("VOICEAI_TEST_PG_BIN"):
        return Path(os.environ["VOICEAI_TEST_PG_BIN"])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                       if p.parent.parent.name.isdigit() else 0)
    return installed[-1].parent if installed else None


class PrivatePostgres:
    """A Postgres server owned by one test: `start`, `stop` (fast shutdown), `start` again, `close`.

    Use it as a context manager: leaving the block stops the server (immediately, if still running)
    and removes its folder, whatever happened inside.
    """

    def __init__(self) -> None:
        bin_dir = _pg_bin_dir()
        if bin_dir is None or not (bin_dir / "pg_ctl").exists():
            pytest.skip("no Postgres server binaries (initdb, pg_ctl): install postgresql or set VOICEAI_TEST_PG_BIN")
        self.bin_dir = bin_dir
        self._run_as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            user = os.environ.get("VOICEAI_TEST_PG_OS_USER", "postgres")
            try:
                owner = pwd.getpwnam(user)
            except KeyError:
                pytest.skip(f"running as root and there is no {user!r} OS user to run Postgres as "
                            "(set VOICEAI_TEST_PG_OS_USER)")
            self._run_as = ["runuser", "-u", user, "--"]
        self.root = Path(tempfile.mkdtemp(prefix="voiceai-pg-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self.port = free_port()
        self.running = False
        self._pg(["mkdir", str(self.socket_dir)], binary=False)
        self._pg(["initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync", "--no-instructions"])

    @property
    def superuser_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._pg(["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60",
                  "start"])
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``: fast ends every session and shuts down cleanly."""
        self._pg(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"])
        self.running = False

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pg(self, argv: list[str], *, binary: bool = True) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]] if binary else argv
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run([*self._run_as, *command], capture_output=True, text=True, env=env, timeout=120,
                                cwd=self.root, check=False)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
