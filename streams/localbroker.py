"""A local Apache Kafka broker for development and tests, without Docker.

``up`` fetches the official Kafka jars from Maven Central with Maven (once per version, into a
cache directory), formats a KRaft log directory (once per data directory), starts one combined
broker+controller JVM detached from this process, and returns only when a real produce/consume
round trip through aiokafka succeeds. ``status`` and ``down`` find that broker again through
``<data_dir>/broker.json``, from this process or any other.

The Kafka version is pinned here and only here; ``docker-compose.kafka.yml`` must use the same.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from streams.errors import LocalBrokerError
from streams.kafka_clients import KafkaConnection, connection
from streams.local_security import ADMIN, LocalSecurity, write_private

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"  # log4j-slf4j-impl: the binding that sends the broker's logs to log4j2
MIN_JAVA = 17
HEALTHCHECK_TOPIC = "__orchestrator_healthcheck"
RECORD, MARKER = "broker.json", "fetched.json"
INSTALL_HINT = (
    "install OpenJDK 17+ and Maven (e.g. `apt-get install openjdk-17-jre-headless maven`) "
    "or run Kafka in Docker with `docker compose -f docker-compose.kafka.yml up -d`"
)
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-Djava.awt.headless=true", "-XX:+ExitOnOutOfMemoryError")
POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.orchestrator</groupId><artifactId>kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
"""
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
"""

log = logging.getLogger(__name__)
T = TypeVar("T")
# Brokers this process started: reaped by poll() (no zombies), never garbage-collected running.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker, as ``up`` and ``status`` report it."""

    bootstrap_servers: str
    port: int
    controller_port: int
    pid: int
    version: str
    log_file: Path
    data_dir: Path
    secure: bool = False
    """SASL_SSL with SCRAM users and ACLs (:mod:`streams.local_security`)."""


def default_cache_dir() -> Path:
    """Where jars go: ``$ORCHESTRATOR_CACHE_DIR`` or ``~/.cache/discovery-orchestrator``."""
    env = os.environ.get("ORCHESTRATOR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "discovery-orchestrator"


def default_data_dir() -> Path:
    """The broker's state: ``$ORCHESTRATOR_KAFKA_DIR`` or ``~/.local/state/.../kafka``."""
    env = os.environ.get("ORCHESTRATOR_KAFKA_DIR")
    default = Path.home() / ".local" / "state" / "discovery-orchestrator" / "kafka"
    return Path(env).expanduser() if env else default


def is_fetched(kafka_home: Path) -> bool:
    """True if ``kafka_home``'s marker records a complete fetch of this pom and its jars remain."""
    try:
        marker = json.loads((kafka_home / MARKER).read_text())
        jars = [kafka_home / "libs" / name for name in marker["jars"]]
        same = (marker["version"], marker["pom"]) == (KAFKA_VERSION, POM)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return same and bool(jars) and all(jar.is_file() for jar in jars)


def fetch_kafka(cache_dir: Path | None = None) -> Path:
    """Copy Kafka's jars from Maven Central unless already done; return the ``libs`` directory.

    Raises:
        LocalBrokerError: Maven is missing, or it failed (the message has its log's tail).
    """
    home = (cache_dir or default_cache_dir()).expanduser().resolve() / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if is_fetched(home):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalBrokerError(f"Maven (mvn) is needed once, to fetch Kafka: {INSTALL_HINT}")
        (home / "pom.xml").write_text(POM)
        shutil.rmtree(libs, ignore_errors=True)
        log.info("fetching Kafka %s with Maven into %s", KAFKA_VERSION, libs)
        _run_maven(mvn, home)
        jars = sorted(jar.name for jar in libs.glob("*.jar"))
        if f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
            raise LocalBrokerError(f"Maven succeeded but {libs} has no Kafka {KAFKA_VERSION} jar")
        _write_json(home / MARKER, {"version": KAFKA_VERSION, "pom": POM, "jars": jars})
    return libs


def _run_maven(mvn: str, home: Path) -> None:
    maven_log = home / "maven.log"
    goal = ["dependency:copy-dependencies", "-DoutputDirectory=libs", "-DincludeScope=runtime"]
    with maven_log.open("wb") as out:
        try:
            code = subprocess.call(
                [mvn, "-B", "-ntp", *goal], cwd=home, stdout=out, stderr=out, timeout=900
            )
            failure = f"exit {code}" if code else ""
        except subprocess.TimeoutExpired:
            failure = "it took over 900 s"
    if failure:
        raise LocalBrokerError(
            f"Maven could not fetch Kafka {KAFKA_VERSION} ({failure}); "
            f"last lines of {maven_log}:\n{tail(maven_log)}"
        )


def parse_java_version(text: str) -> int | None:
    """The major version in ``java -version`` output (``1.8.0_392`` is 8), or None."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def find_java() -> str:
    """The ``java`` to run (``$JAVA_HOME/bin/java`` first), checked to be Java 17 or later."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate and os.access(candidate, os.X_OK) else shutil.which("java")
    if java is None:
        raise LocalBrokerError(f"Java is not installed (Kafka needs {MIN_JAVA}+): {INSTALL_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalBrokerError(f"cannot run `{java} -version` ({exc}): {INSTALL_HINT}") from exc
    major = parse_java_version(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "an unknown Java"
        raise LocalBrokerError(f"Kafka needs Java {MIN_JAVA}+, {java} is {found}: {INSTALL_HINT}")
    return java


def render_server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    """``server.properties`` of a single-node KRaft broker+controller on 127.0.0.1."""
    return SERVER_PROPERTIES.format(port=port, controller_port=controller_port, log_dir=log_dir)


def new_cluster_id() -> str:
    """A KRaft cluster id: a random uuid as 22 url-safe base64 characters (never a leading -)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def port_is_free(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:``port`` now (TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _controller_port(port: int) -> int:
    if port < 65535 and port_is_free(port + 1):
        return port + 1
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            candidate: int = sock.getsockname()[1]
        if candidate != port:
            return candidate


def up(
    port: int = 9092,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    timeout_s: float = 60.0,
    secure: bool = False,
) -> BrokerInfo:
    """Start the local broker (or find it running) and return once it serves clients.

    ``timeout_s`` bounds the wait for the started JVM to serve, not the one-time fetch.
    ``secure``: a SASL_SSL listener with SCRAM users and ACLs instead of PLAINTEXT
    (:mod:`streams.local_security`; the data directory stays secure or plain for good).

    Raises:
        LocalBrokerError: Java or Maven missing, port taken, fetch failed, or the broker did
            not serve in time (then the message ends with the broker log's last lines).
    """
    data_dir = _resolve(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir / ".lock"):
        security = _security(data_dir, secure)
        running = status(data_dir)
        if running is not None:
            if running.port != port:
                log.warning(
                    "%s: Kafka already runs on port %d, not %d", data_dir, running.port, port
                )
            _run_sync(wait_until_ready(_admin(running.bootstrap_servers, security), timeout_s))
            return running
        java = find_java()
        if not port_is_free(port):
            raise LocalBrokerError(
                f"port {port} on 127.0.0.1 is already in use: stop what listens there "
                "or pick another port with --port"
            )
        controller_port = _controller_port(port)
        libs = fetch_kafka(cache_dir)
        props, log4j, log_file = (data_dir / name for name in _FILES)
        properties = render_server_properties(port, controller_port, data_dir / "log")
        if security is None:
            props.write_text(properties)
        else:  # it holds the broker's own passwords
            write_private(props, security.server_properties(properties, port, controller_port))
        log4j.write_text(LOG4J2_PROPERTIES)
        java_cmd = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
        if not (data_dir / "log" / "meta.properties").exists():  # formatted once: keeps its id
            _format(java_cmd, props, data_dir, security)
        proc = _launch([*java_cmd, "kafka.Kafka", str(props)], data_dir, log_file)
        info = BrokerInfo(
            f"127.0.0.1:{port}",
            port,
            controller_port,
            proc.pid,
            KAFKA_VERSION,
            log_file,
            data_dir,
            security is not None,
        )
        if security is not None:
            security.write_config_files(info.bootstrap_servers)
        record = {"pid": proc.pid, "port": port, "controller_port": controller_port}
        record["secure"] = security is not None
        _write_json(
            data_dir / RECORD, {**record, "version": KAFKA_VERSION, "log_file": str(log_file)}
        )
        log.info("started Kafka %s (pid %d) on %s", KAFKA_VERSION, proc.pid, info.bootstrap_servers)
        try:
            _run_sync(
                wait_until_ready(
                    _admin(info.bootstrap_servers, security),
                    timeout_s,
                    is_alive=lambda: proc.poll() is None,
                )
            )
        except BaseException as exc:
            _stop(proc.pid, timeout_s=5.0)
            (data_dir / RECORD).unlink(missing_ok=True)
            if isinstance(exc, LocalBrokerError):
                raise LocalBrokerError(
                    f"{exc}; last lines of {log_file}:\n{tail(log_file)}"
                ) from exc
            raise
        return info


_FILES = ("server.properties", "log4j2.properties", "kafka.log")


def _launch(command: list[str], data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (no terminal signals), output to ``log_file``."""
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))  # keep the previous run's
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def _format(
    java_cmd: list[str], props: Path, data_dir: Path, security: LocalSecurity | None = None
) -> None:
    arguments = ["kafka.tools.StorageTool", "format", "-t", new_cluster_id()]
    arguments += ["-c", str(props), "--standalone"]
    argfile = data_dir / ".format.args"
    if security is not None:
        # the SCRAM users' passwords go to java in an argument file, never on a command line
        write_private(argfile, "\n".join([*arguments, *security.format_arguments()]).encode())
        arguments = [f"@{argfile}"]
    try:
        result = subprocess.run(
            [*java_cmd, *arguments], cwd=data_dir, capture_output=True, text=True, timeout=120
        )
    finally:
        argfile.unlink(missing_ok=True)
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip()
        lines = (security.redact(said) if security else said).splitlines()[-20:]
        raise LocalBrokerError(f"formatting {data_dir / 'log'} failed:\n" + "\n".join(lines))


def _security(data_dir: Path, secure: bool) -> LocalSecurity | None:
    """The secure setup of ``data_dir`` if ``secure`` (made now if needed); refuses to
    turn a formatted plain data directory secure, or a secure one plain."""
    security = LocalSecurity.of(data_dir)
    formatted = (data_dir / "log" / "meta.properties").exists()
    if formatted and security.exists() != secure:
        made, asked = ("with", "without") if security.exists() else ("without", "with")
        raise LocalBrokerError(
            f"{data_dir} was formatted {made} --secure; start it {made} --secure, or use "
            f"another --data-dir to start one {asked} it"
        )
    if not secure:
        return None
    security.prepare()
    return security


def _admin(bootstrap_servers: str, security: LocalSecurity | None) -> KafkaConnection:
    """How ``up`` itself reaches the broker: PLAINTEXT, or as the secure broker's admin."""
    if security is None:
        return KafkaConnection(bootstrap_servers)
    return security.connection(ADMIN, bootstrap_servers)


async def wait_until_ready(
    kafka: KafkaConnection | str,
    timeout_s: float = 60.0,
    *,
    is_alive: Callable[[], bool] | None = None,
) -> None:
    """Return once a record produced to the broker is consumed back; retry until then.

    Raises:
        LocalBrokerError: ``is_alive()`` turned false, or ``timeout_s`` passed (retriable).
    """
    kafka = connection(kafka)
    bootstrap_servers = kafka.bootstrap_servers
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: BaseException | None = None
    while True:
        if is_alive is not None and not is_alive():
            raise LocalBrokerError("the Kafka process exited before it served clients")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise LocalBrokerError(
                f"Kafka at {bootstrap_servers} did not complete a produce/consume round trip "
                f"within {timeout_s:g} s (last error: {last_error!r})",
                retriable=True,
            )
        try:
            await asyncio.wait_for(_round_trip(kafka), timeout=min(remaining, 10.0))
            return
        except (KafkaError, OSError, TimeoutError) as exc:
            last_error = exc
            await asyncio.sleep(0.2)


async def _round_trip(kafka: KafkaConnection) -> None:
    host, _, port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    _reader, writer = await asyncio.open_connection(host, int(port))  # no client noise before
    writer.close()
    await writer.wait_closed()
    admin = kafka.admin(request_timeout_ms=5000)
    try:
        await admin.start()
        if HEALTHCHECK_TOPIC not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics([NewTopic(HEALTHCHECK_TOPIC, 1, 1)])
                for _topic, code, *_message in response.topic_errors:
                    if code and for_code(code) is not TopicAlreadyExistsError:
                        raise for_code(code)(f"creating {HEALTHCHECK_TOPIC}")
    finally:
        await admin.close()
    value = uuid.uuid4().bytes
    producer = kafka.producer(acks="all")
    try:
        await producer.start()
        sent = await producer.send_and_wait(HEALTHCHECK_TOPIC, value, partition=0)
    finally:
        await producer.stop()
    partition = TopicPartition(HEALTHCHECK_TOPIC, 0)
    consumer = kafka.consumer(enable_auto_commit=False)
    try:
        await consumer.start()
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record = await consumer.getone(partition)
    finally:
        await consumer.stop()
    if record.value != value:
        raise LocalBrokerError(f"read back another record at offset {sent.offset}")


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` from sync code in a fresh loop that never becomes the thread's current one
    (in a worker thread if this thread runs a loop already)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: _run_sync(coro)).result()


def status(data_dir: Path | None = None) -> BrokerInfo | None:
    """The broker recorded in ``data_dir`` if its JVM is alive and runs this dir's Kafka."""
    data_dir = _resolve(data_dir)
    try:
        record = json.loads((data_dir / RECORD).read_text())
        pid, port, controller_port = (
            int(record[key]) for key in ("pid", "port", "controller_port")
        )
        version, log_file = str(record["version"]), Path(record["log_file"])
        secure = bool(record.get("secure", False))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid) or not _runs_kafka(pid, data_dir / "server.properties"):
        return None
    return BrokerInfo(
        f"127.0.0.1:{port}", port, controller_port, pid, version, log_file, data_dir, secure
    )


def down(data_dir: Path | None = None, timeout_s: float = 20.0) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM to its process group, SIGKILL after ``timeout_s``.

    Returns True if a broker was running (it is stopped now).
    """
    data_dir = _resolve(data_dir)
    info = status(data_dir)
    if info is not None:
        log.info("stopping Kafka (pid %d) on %s", info.pid, info.bootstrap_servers)
        _stop(info.pid, timeout_s)
    (data_dir / RECORD).unlink(missing_ok=True)
    return info is not None


def _stop(pid: int, timeout_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)  # started with start_new_session: its group id is its pid
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            _children.pop(pid, None)
            return
        log.warning("Kafka (pid %d) still runs %.0f s after %s", pid, wait_s, sig.name)
    raise LocalBrokerError(f"could not stop Kafka (pid {pid})")


def _alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None  # also reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (dead, not yet reaped by its parent) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def _runs_kafka(pid: int, props: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust the record
    return "kafka.Kafka" in argv and str(props) in argv


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ("" if it cannot be read)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _resolve(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser().resolve()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(json.dumps(data, indent=2) + "\n")
    scratch.replace(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: two processes never fetch or start in one dir at once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock
