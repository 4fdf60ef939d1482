"""A PostgreSQL cluster for a group's servers (pfcvr.tracking.lab): found, made once, started.

Debian's ``postgresql`` package (or any ``initdb``/``postgres`` on PATH); the cluster has one role
``pfcvr`` with a password, password (scram-sha-256) login over TCP only, and the databases
``mlflow`` and ``optuna``. PostgreSQL refuses to run as root: as root, it runs as the unprivileged
user ``postgres`` (or ``nobody``). No mlflow here.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROLE = "pfcvr"
DATABASES = ("mlflow", "optuna")
START_TIMEOUT_S = 180.0        # MLflow migrates a fresh database at its first start (~30 s)
PG_FOLDERS = ("/usr/lib/postgresql",)   # Debian's layout: /usr/lib/postgresql/<major>/bin


class LabError(RuntimeError):
    """A one-line reason why the lab servers cannot start or stop."""


def pg_binaries() -> dict[str, str]:
    """``initdb`` and ``postgres`` of one PostgreSQL installation: from PATH, else the newest
    major version in Debian's /usr/lib/postgresql/<major>/bin. Raises LabError when none."""
    found = {name: shutil.which(name) for name in ("initdb", "postgres")}
    if all(found.values()):
        return found
    for base in PG_FOLDERS:
        majors = sorted((p for p in Path(base).glob("*/bin") if (p / "postgres").exists()),
                        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)
        if majors:
            return {name: str(majors[0] / name) for name in ("initdb", "postgres")}
    raise LabError("PostgreSQL is not installed (no initdb/postgres on PATH or in "
                   "/usr/lib/postgresql/*/bin): apt-get install postgresql (Debian/Ubuntu), or "
                   "put its bin folder on PATH")


def server_user() -> str | None:
    """The user PostgreSQL runs as: None (this user) unless we are root, which PostgreSQL
    refuses; then ``postgres`` (Debian's package makes it) or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LabError("running as root and neither user postgres nor nobody exists: run as a "
                   "normal user")


def as_user(user: str | None) -> dict:
    """Popen keywords that run a command as ``user`` (no extra groups), or as ourselves."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def give(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def init_cluster(folder: Path, secret: str, user: str | None) -> Path:
    """``folder/pgdata``, made by initdb if missing: role ROLE with ``secret``, password login
    over TCP from any address (whether it listens beyond 127.0.0.1 is `start`'s --host)."""
    data = folder / "pgdata"
    if (data / "PG_VERSION").exists():
        return data
    binaries = pg_binaries()
    data.mkdir(mode=0o700, exist_ok=True)
    give(data, user)
    with tempfile.NamedTemporaryFile("w", prefix="pfcvr-pw-", delete=False) as f:
        f.write(secret + "\n")
    pwfile = Path(f.name)
    give(pwfile, user)
    try:
        out = subprocess.run([binaries["initdb"], "-D", str(data), "-U", ROLE, "-E", "UTF8",
                              "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                              f"--pwfile={pwfile}"], capture_output=True, text=True,
                             **as_user(user))
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise LabError(f"initdb of {data} failed: {reason}" + (
            f" (user {user} must be able to reach {folder}: chmod o+x its parent folders, or "
            "use another --dir)" if user and "ermission" in out.stderr else ""))
    with open(data / "pg_hba.conf", "a") as hba:   # members connect from their machines
        hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    return data


def wait_until(ready, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise LabError(f"{what} exited with status {proc.returncode}: {' | '.join(tail)} "
                           f"(log: {log})")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {START_TIMEOUT_S:.0f} s (log: {log})")
        time.sleep(0.3)


def connects(port: int, secret: str, dbname: str = "postgres") -> bool:
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", port=port, user=ROLE, password=secret,
                        dbname=dbname, connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


def create_databases(port: int, secret: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=ROLE, password=secret,
                         dbname="postgres", autocommit=True) as con:
        for name in DATABASES:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
                    is None:
                con.execute(f'CREATE DATABASE "{name}"')


def database_url(db: str, port: int, host: str = "127.0.0.1", secret: str | None = None) -> str:
    """``postgresql://pfcvr[:secret]@host:port/db`` (SQLAlchemy 2.1 reads it with psycopg 3)."""
    cred = f"{ROLE}:{secret}" if secret else ROLE
    return f"postgresql://{cred}@{host}:{port}/{db}"
