"""A real single-node KRaft Apache Kafka broker on loopback, fetched with Maven, no Docker.

Idempotent: the jar fetch is skipped when complete, the log dir is formatted once, and a broker
already answering on the port is left alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.local import process
from deploy.local.locks import SharedLock
from deploy.local.paths import FILES, cache_dir, local_dir


@dataclass(frozen=True)
class KafkaLayout:
    port: int
    controller_port: int
    home: Path
    jars: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.out"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def layout(port: int | None = None) -> KafkaLayout:
    """Where a broker on `port` keeps its files (`SWITCHBOARD_LOCAL_KAFKA_PORT`, default 9092)."""
    port = port or int(os.environ.get("SWITCHBOARD_LOCAL_KAFKA_PORT", "9092"))
    home = local_dir() / f"kafka-{port}"
    home.mkdir(parents=True, exist_ok=True)
    return KafkaLayout(port=port, controller_port=port + 1, home=home, jars=cache_dir() / "kafka-jars")


def _pom_digest() -> str:
    return hashlib.sha256((FILES / "pom.xml").read_bytes()).hexdigest()


# A second caller (the tests fetch in the background, in every pytest-xdist worker) waits for the fetch under way.
_FETCH = SharedLock(lambda: cache_dir() / "locks" / "kafka-jars.lock")


def fetch_jars(lay: KafkaLayout, echo=print) -> None:
    """Resolve the broker's jars from Maven Central into the cache, unless already complete."""
    with _FETCH:
        _fetch_jars(lay, echo)


def fetch_default_jars() -> None:
    """The jars every broker of this checkout runs (the tests fetch them ahead of their first broker)."""
    fetch_jars(layout(), echo=lambda *_: None)


def _fetch_jars(lay: KafkaLayout, echo) -> None:
    marker = lay.jars / ".complete"
    if marker.exists() and marker.read_text().strip() == _pom_digest():
        return
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is required to fetch Kafka: apt-get install maven")
    if shutil.which("java") is None:
        raise RuntimeError("Java 17+ is required to run Kafka: apt-get install openjdk-17-jre-headless")
    echo("fetching Apache Kafka jars with Maven ...")
    tmp = lay.jars.with_name("kafka-jars.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(FILES / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(lay.jars, ignore_errors=True)
    tmp.rename(lay.jars)
    marker.write_text(_pom_digest())


def _java(lay: KafkaLayout, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
    return [
        "java",
        "-Xms256m",
        heap,
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={FILES / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={lay.home}",
        "-cp",
        f"{lay.jars}/*",
        main,
        *args,
    ]


def cluster_id() -> str:
    """A new KRaft cluster id, as `kafka-storage random-uuid` prints it (without starting a JVM for it).

    Kafka's Uuid.randomUuid: a random (version 4) UUID in URL-safe base64 without padding, never one
    that starts with "-" (it would read as an option); its version bits keep it off Kafka's reserved ids.
    """
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


def configure(lay: KafkaLayout) -> None:
    """Write server.properties and format the KRaft log dir once."""
    template = (FILES / "server.properties.template").read_text()
    lay.properties.write_text(
        template.format(port=lay.port, controller_port=lay.controller_port, data_dir=lay.data_dir)
    )
    if (lay.data_dir / "meta.properties").exists():
        return
    subprocess.run(
        _java(
            lay,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id(),
            "-c",
            str(lay.properties),
            "-g",
            heap="-Xmx256m",
        ),
        check=True,
        capture_output=True,
        text=True,
    )


def ready(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request."""
    from shared.kafka import kafka_ready

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are expected here
    return asyncio.run(kafka_ready(bootstrap, timeout_s))


def start(port: int | None = None, *, wait_s: float = 120, echo=print) -> KafkaLayout:
    """Fetch, format and start the broker unless it already runs; wait until it answers metadata."""
    lay = layout(port)
    if process.read_pid(lay.pid_file) and ready(lay.bootstrap):
        return lay
    if process.read_pid(lay.pid_file) is None and ready(lay.bootstrap, timeout_s=1.5):
        echo(f"a Kafka broker already answers on {lay.bootstrap}; using it")
        return lay
    fetch_jars(lay, echo)
    configure(lay)
    if process.read_pid(lay.pid_file) is None:
        echo(f"starting Kafka on {lay.bootstrap} (log: {lay.log_file})")
        process.spawn(_java(lay, "kafka.Kafka", str(lay.properties)), pid_file=lay.pid_file, log_file=lay.log_file)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.read_pid(lay.pid_file) is None:
            tail = lay.log_file.read_text(errors="replace")[-3000:] if lay.log_file.exists() else ""
            raise RuntimeError(f"Kafka exited during start-up; last output:\n{tail}")
        if ready(lay.bootstrap, timeout_s=2):
            return lay
        time.sleep(0.5)
    raise RuntimeError(f"Kafka did not answer on {lay.bootstrap} within {wait_s}s; see {lay.log_file}")


def stop(port: int | None = None) -> bool:
    """Stop the broker this project started on `port`, by its pid file."""
    return process.stop(layout(port).pid_file, timeout_s=60)
