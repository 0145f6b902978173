"""PostgreSQL from Debian's `postgresql` package, started when `SWITCHBOARD_DATABASE_URL` does not answer."""

from __future__ import annotations

import asyncio
import glob
import shutil
import subprocess
import time
from urllib.parse import urlparse, urlunparse

import asyncpg

from deploy.local.paths import local_dir

HBA_MARK = "# switchboard-local: trust the postgres superuser on loopback"
LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


async def _probe(url: str) -> str:
    """'ok', 'no_database', 'auth', or 'down'."""
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return "no_database"
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return "auth"
    except (TimeoutError, OSError, asyncpg.CannotConnectNowError):
        return "down"
    except asyncpg.PostgresError as exc:
        if "password" in str(exc) or "authentication" in str(exc):
            return "auth"
        raise
    await conn.close()
    return "ok"


def probe(url: str) -> str:
    """Whether the database URL answers, and if not, why."""
    return asyncio.run(_probe(url))


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) and shutil.which("pg_lsclusters") is not None


def install(echo=print) -> None:
    """Install Debian's postgresql package (needs root)."""
    echo("installing PostgreSQL from Debian's packages ...")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql"],
        check=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def _cluster() -> tuple[str, str, int, str]:
    """(version, name, port, status) of the first Debian cluster, creating one if none exists."""
    rows = [ln.split() for ln in _sh("pg_lsclusters", "--no-header").splitlines() if ln.strip()]
    if not rows:
        version = sorted(p.split("/")[4] for p in glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1]
        subprocess.run(["pg_createcluster", version, "main"], check=True, capture_output=True)
        rows = [ln.split() for ln in _sh("pg_lsclusters", "--no-header").splitlines() if ln.strip()]
    version, name, port, status = rows[0][0], rows[0][1], int(rows[0][2]), rows[0][3]
    return version, name, port, status


def _trust_loopback(version: str, name: str) -> None:
    hba = f"/etc/postgresql/{version}/{name}/pg_hba.conf"
    text = open(hba).read()
    if HBA_MARK in text:
        return
    lines = f"{HBA_MARK}\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust\n"
    with open(hba, "w") as out:
        out.write(lines + text)
    subprocess.run(["pg_ctlcluster", version, name, "reload"], check=False, capture_output=True)


def _tune(version: str, name: str) -> None:
    conf_dir = f"/etc/postgresql/{version}/{name}/conf.d"
    subprocess.run(["mkdir", "-p", conf_dir], check=True)
    with open(f"{conf_dir}/switchboard.conf", "w") as out:
        out.write("# written by deploy/local/postgres.py\nmax_connections = 300\nlisten_addresses = 'localhost'\n")


def ensure(url: str, echo=print) -> str:
    """Make `url` answer: start (and if needed install) a local cluster, then create the database."""
    state = probe(url)
    parsed = urlparse(url)
    if state in ("down", "auth"):
        if parsed.hostname not in LOOPBACK and parsed.hostname is not None:
            raise RuntimeError(f"database at {parsed.hostname} does not answer ({state}); not starting a local one")
        if not _installed():
            install(echo)
        version, name, port, status = _cluster()
        if port != (parsed.port or 5432):
            echo(f"warning: local cluster {version}/{name} listens on {port}, the URL says {parsed.port or 5432}")
        _tune(version, name)
        _trust_loopback(version, name)
        if status != "online":
            echo(f"starting PostgreSQL cluster {version}/{name}")
            subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
            (local_dir() / "postgres.started").write_text(f"{version} {name}\n")
        else:
            subprocess.run(["pg_ctlcluster", version, name, "restart"], check=True)
        deadline = time.monotonic() + 60
        while (state := probe(url)) in ("down",) and time.monotonic() < deadline:
            time.sleep(0.5)
    if state == "no_database":
        create_database(url, urlparse(url).path.lstrip("/"))
        state = probe(url)
    if state != "ok":
        raise RuntimeError(f"database {url} is not usable ({state})")
    return url


def admin_url(url: str) -> str:
    """The same server, database `postgres`."""
    return urlunparse(urlparse(url)._replace(path="/postgres"))


def create_database(url: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE `name` (optionally from a template) on the server of `url`."""

    async def run():
        conn = await asyncpg.connect(admin_url(url))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                ident = '"' + name.replace('"', '""') + '"'
                tpl = f' TEMPLATE "{template}"' if template else ""
                await conn.execute(f"CREATE DATABASE {ident}{tpl}")
        finally:
            await conn.close()

    asyncio.run(run())


def stop(echo=print) -> bool:
    """Stop the cluster only if this project started it."""
    marker = local_dir() / "postgres.started"
    if not marker.exists():
        return False
    version, name = marker.read_text().split()
    subprocess.run(["pg_ctlcluster", version, name, "stop"], check=False)
    marker.unlink()
    return True
