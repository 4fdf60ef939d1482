"""A research group's servers: PostgreSQL for MLflow and Optuna, and an MLflow tracking server.

    python -m pfcvr.tracking.lab start [--dir .lab] [--host 0.0.0.0] [--port 5000] [--pg-port 5432]
                                     [--no-auth]
    python -m pfcvr.tracking.lab add-user NAME [--dir .lab] [--public-host NAME]
    python -m pfcvr.tracking.lab env   [--dir .lab] [--public-host NAME]
    python -m pfcvr.tracking.lab stop  [--dir .lab]

``start`` (``make lab-server``) runs, in the folder ``--dir``:

- PostgreSQL (pfcvr.runtime.postgres): a data folder ``pgdata/`` made once by ``initdb`` with
  one role ``pfcvr`` (password generated once into ``password``, mode 600; or ``LAB_PASSWORD``),
  password login over TCP only, two databases ``mlflow`` and ``optuna`` (the Optuna tables
  created here, once, so that workers starting together on several machines never race to
  create them); as root it runs as the unprivileged user ``postgres`` (or ``nobody``);
- ``mlflow server --backend-store-uri postgresql://.../mlflow --serve-artifacts
  --artifacts-destination <dir>/mlartifacts``: clients send runs, metrics, figures and models over
  HTTP, so no member needs a filesystem shared with the server. The password reaches the server
  through ``PGPASSWORD``, not its command line (``ps`` shows command lines to every user).
  Unless ``--no-auth``, it runs MLflow's ``basic-auth`` app: user ``admin`` (password generated
  into ``admin-password``), accounts in ``basic_auth.db``, every account allowed to log to every
  experiment (``default_permission = EDIT``); ``add-user NAME`` makes a member's account and
  prints that member's lines.

Both run in their own process group (``setsid``); ``lab.json`` records them, and ``stop`` ends
each group (PostgreSQL with a fast shutdown). ``env`` prints what each member sets:
``MLFLOW_TRACKING_URI`` (with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) and
``OPTUNA_STORAGE``. Errors are one line (``lab-server: error: ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pfcvr.runtime.postgres import (DATABASES, LabError, as_user, connects, create_databases,
                                    database_url, init_cluster, pg_binaries, server_user,
                                    wait_until)

STATE = "lab.json"
STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _secret(path: Path) -> str:
    """The secret in ``path``, generated there (mode 600) the first time."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def password(folder: Path) -> str:
    """The database password: ``LAB_PASSWORD``, else ``folder/password`` (made once)."""
    return os.environ.get("LAB_PASSWORD") or _secret(folder / "password")


AUTH_INI = """[mlflow]
default_permission = EDIT
database_uri = sqlite:///{db}
admin_username = admin
admin_password = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""
# auth_cache_ttl_seconds: a password is checked (PBKDF2, tens of ms of CPU) once a minute per
# account and worker instead of at every request; a changed or deleted password may then work on
# for up to 60 s.


def auth_env(folder: Path) -> dict[str, str]:
    """The environment of an MLflow server with the basic-auth app: its config file (written
    here) and the key that signs its forms, both kept in ``folder``."""
    config = folder / "auth.ini"
    admin = _secret(folder / "admin-password")
    config.touch(mode=0o600)
    config.write_text(AUTH_INI.format(db=folder / "basic_auth.db", admin=admin))
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(folder / "flask-secret")}


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def allowed_hosts(public: list[str]) -> str:
    """``--allowed-hosts`` of the MLflow server: its defaults (loopback and private addresses)
    plus the names members use, which MLflow's DNS-rebinding check otherwise refuses."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = [n for name in public for n in (name, f"{name}:*")]
    return ",".join(dict.fromkeys([*get_default_allowed_hosts(), *names]))


def start(folder: Path, host: str, port: int, pg_port: int, workers: int,
          public: list[str], auth: bool = True) -> dict:
    """Start PostgreSQL and the MLflow server (module docstring); returns the state written to
    ``folder/lab.json``. Raises LabError when they are already running or cannot start."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE).exists() and running(folder):
        raise LabError(f"the lab servers of {folder} are already running: "
                       f"python -m pfcvr.tracking.lab stop --dir {folder}")
    user = server_user()
    secret = password(folder)
    data = init_cluster(folder, secret, user)
    binaries = pg_binaries()
    pg_log = folder / "postgres.log"
    with open(pg_log, "ab") as log:
        pg = subprocess.Popen([binaries["postgres"], "-D", str(data), "-c", f"port={pg_port}",
                               "-c", f"listen_addresses={host if host != '0.0.0.0' else '*'}",
                               "-c", "unix_socket_directories="],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True, **as_user(user))
    state = {"postgres_pid": pg.pid, "pg_port": pg_port, "host": host, "port": port,
             "user": user, "auth": auth}
    try:
        wait_until(lambda: connects(pg_port, secret), "PostgreSQL", pg, pg_log)
        create_databases(pg_port, secret)
        import optuna   # its tables now, once: workers on several machines never race for them

        optuna.storages.RDBStorage(database_url("optuna", pg_port, secret=secret)).engine.dispose()
        artifacts = folder / "mlartifacts"
        artifacts.mkdir(exist_ok=True)
        mlflow_log = folder / "mlflow.log"
        exe = Path(sys.executable).with_name("mlflow")
        env = dict(os.environ, PGPASSWORD=secret, MLFLOW_DISABLE_TELEMETRY="true",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(auth_env(folder) if auth else {}))
        with open(mlflow_log, "ab") as log:
            ml = subprocess.Popen(
                [str(exe) if exe.exists() else "mlflow", "server",
                 *(["--app-name", "basic-auth"] if auth else []),
                 "--backend-store-uri", database_url("mlflow", pg_port),
                 "--serve-artifacts", "--artifacts-destination", str(artifacts),
                 "--host", host, "--port", str(port), "--workers", str(workers),
                 "--allowed-hosts", allowed_hosts(public)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        state["mlflow_pid"] = ml.pid
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        wait_until(lambda: _healthy(f"http://{local}:{port}"), "mlflow server", ml, mlflow_log)
    except BaseException:
        _write(folder, state)
        stop(folder)
        raise
    _write(folder, state)
    return state


def _write(folder: Path, state: dict) -> None:
    tmp = folder / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, folder / STATE)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (exited, not reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return True


def running(folder: Path) -> bool:
    state = json.loads((folder / STATE).read_text())
    return _alive(state.get("postgres_pid")) or _alive(state.get("mlflow_pid"))


def _stop_group(pid: int | None, sig: int) -> None:
    """Send ``sig`` to the process group of ``pid`` (its leader, started with setsid), wait
    STOP_TIMEOUT_S for the leader to end, then SIGKILL the group."""
    if not _alive(pid):
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        try:   # our own child: reap it, or it stays a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(folder: Path) -> None:
    """Stop the MLflow server, then PostgreSQL (fast shutdown: SIGINT), each by process group."""
    path = folder.resolve() / STATE
    if not path.exists():
        raise LabError(f"no lab servers were started in {folder} ({STATE} is missing)")
    state = json.loads(path.read_text())
    _stop_group(state.get("mlflow_pid"), signal.SIGTERM)
    _stop_group(state.get("postgres_pid"), signal.SIGINT)


def member_env(folder: Path, public_host: str, user: str | None = None,
               user_password: str | None = None) -> str:
    """The lines a member sets (bash): the MLflow server (with ``user``'s account when the
    server checks accounts; the admin's by default) and the Optuna database."""
    folder = folder.resolve()
    state = json.loads((folder / STATE).read_text())
    lines = [f"export MLFLOW_TRACKING_URI=http://{public_host}:{state['port']}"]
    if state.get("auth"):
        lines += [f"export MLFLOW_TRACKING_USERNAME={user or 'admin'}",
                  f"export MLFLOW_TRACKING_PASSWORD="
                  f"{user_password or _secret(folder / 'admin-password')}"]
    lines.append("export OPTUNA_STORAGE="
                 f"{database_url('optuna', state['pg_port'], public_host, password(folder))}")
    return "\n".join(lines) + "\n"


def add_user(folder: Path, name: str) -> str:
    """Create the MLflow account ``name`` (generated password) on the running server; returns
    its password. Raises LabError when the server runs without accounts or refuses."""
    folder = folder.resolve()
    state = json.loads((folder / STATE).read_text())
    if not state.get("auth"):
        raise LabError("the MLflow server was started with --no-auth: it has no accounts")
    import warnings

    with warnings.catch_warnings():   # starlette's deprecation notice, printed at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server import get_app_client

    secret = secrets.token_urlsafe(15)
    host = "127.0.0.1" if state["host"] in ("0.0.0.0", "::") else state["host"]
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin",
                      MLFLOW_TRACKING_PASSWORD=_secret(folder / "admin-password"))
    try:
        get_app_client("basic-auth", tracking_uri=f"http://{host}:{state['port']}").create_user(
            name, secret)
    except Exception as err:
        raise LabError(f"user {name} could not be created: {' '.join(str(err).split())[:300]}")
    return secret


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pfcvr.tracking.lab",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("start", "stop", "env", "add-user"))
    ap.add_argument("name", nargs="?", help="add-user: the member's account name")
    ap.add_argument("--dir", type=Path, default=Path(".lab"),
                    help="folder of the database, artifacts, logs and password (default .lab)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address both servers listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=5000, help="MLflow server port")
    ap.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port")
    ap.add_argument("--workers", type=int, default=4, help="MLflow server worker processes")
    ap.add_argument("--no-auth", action="store_true",
                    help="MLflow server without accounts (anyone who reaches it may write)")
    ap.add_argument("--public-host", default=socket.getfqdn(),
                    help="the name members reach this machine by (default: its host name)")
    args = ap.parse_args(argv)
    try:
        if args.command == "start":
            state = start(args.dir, args.host, args.port, args.pg_port, args.workers,
                          [args.public_host, socket.gethostname()], auth=not args.no_auth)
            print(f"PostgreSQL on {args.host}:{state['pg_port']} (databases "
                  f"{', '.join(DATABASES)}), MLflow server on http://{args.host}:{args.port} "
                  f"(artifacts in {args.dir.resolve() / 'mlartifacts'}); stop with "
                  f"`make lab-stop`.\nThe administrator sets (`make lab-user NAME=...` makes a "
                  "member's account and prints that member's lines):")
            print(member_env(args.dir, args.public_host), end="")
        elif args.command == "env":
            print(member_env(args.dir, args.public_host), end="")
        elif args.command == "add-user":
            if not args.name:
                raise LabError("add-user needs the member's account name")
            secret = add_user(args.dir, args.name)
            print(f"MLflow account {args.name} created; {args.name} sets:")
            print(member_env(args.dir, args.public_host, args.name, secret), end="")
        else:
            stop(args.dir)
            print(f"stopped the lab servers of {args.dir.resolve()}")
    except (LabError, OSError, json.JSONDecodeError) as err:
        print(f"lab-server: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
