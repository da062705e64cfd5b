"""A real single-node Apache Kafka broker (KRaft) for tests.

The broker is started through ``scripts/kafka-broker run`` (which ``exec``s the
JVM, so the child process *is* the broker) with jars from ``.cache/kafka-jars``
at the repository root; ``scripts/kafka-broker install`` fetches them once from
Maven Central if they are missing. Everything listens on 127.0.0.1 only.

Typical use (see ``tests/conftest.py`` for the pytest fixtures)::

    broker = KafkaBroker()
    broker.start()  # free ports, fresh temp data dir, waits for metadata
    broker.create_topics(["events"], partitions=2)
    ...  # produce / consume against broker.bootstrap
    broker.restart(hard=True)  # SIGKILL, then same ports + same data dir
    broker.close()  # stop and delete the temp data dir
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from kafka.admin import KafkaAdminClient

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
SCRIPT: Path = REPO_ROOT / "scripts" / "kafka-broker"
JARS_DIR: Path = REPO_ROOT / ".cache" / "kafka-jars"

HOST = "127.0.0.1"


class KafkaBrokerUnavailable(RuntimeError):
    """Java or the broker jars cannot be obtained on this machine.

    Raised before any broker process is launched; the message says why (for
    example ``java not found`` or the Maven error). The pytest fixtures turn
    this into a skip locally and a failure on CI.
    """


class KafkaBrokerError(RuntimeError):
    """The broker process failed to start, died, or did not become ready."""


def free_port() -> int:
    """Return a TCP port that is currently free on 127.0.0.1.

    The port is found by binding to ``127.0.0.1:0``; it is released before
    returning, so there is a small window in which another process could take
    it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def install_jars(timeout: float = 600.0) -> None:
    """Make sure Java 17+ and the broker jars are available.

    Runs ``scripts/kafka-broker install``, which is a fast no-op when the jars
    are already in ``.cache/kafka-jars``.

    Raises:
        KafkaBrokerUnavailable: Java is missing or too old, Maven is missing,
            or the jars could not be fetched.
    """
    if not SCRIPT.is_file():
        raise KafkaBrokerUnavailable(f"{SCRIPT} is missing")
    if shutil.which("bash") is None:
        raise KafkaBrokerUnavailable("bash not found (needed by scripts/kafka-broker)")
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT), "install"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaBrokerUnavailable(
            f"'scripts/kafka-broker install' timed out after {timeout:.0f}s"
        ) from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        tail = "\n".join(output[-15:])
        raise KafkaBrokerUnavailable(
            f"'scripts/kafka-broker install' failed (exit {result.returncode}):\n{tail}"
        )


class KafkaBroker:
    """Manage one Kafka broker process (KRaft, broker+controller, 127.0.0.1).

    Ports are picked on the first :meth:`start` and kept for the lifetime of the
    object, as is the data directory, so :meth:`restart` brings the broker back
    at the same bootstrap address with all topics and committed offsets intact.

    Args:
        data_dir: Where the broker keeps its config, logs and topic data. If
            omitted, a fresh temporary directory is created on first start and
            deleted by :meth:`close`.
        port: Client port; picked from free ports if omitted.
        controller_port: KRaft controller port; picked if omitted.
        startup_timeout: Seconds to wait for the broker to answer a metadata
            request before giving up.
        stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        startup_timeout: float = 90.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self._owns_data_dir = data_dir is None
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir else None
        self._port = port
        self._controller_port = controller_port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.last_start_seconds: float | None = None
        """Wall time of the most recent successful :meth:`start`, in seconds."""
        atexit.register(self._kill_at_exit)

    # ------------------------------------------------------------------ info

    @property
    def port(self) -> int:
        """Client (PLAINTEXT) port; fixed after the first start."""
        if self._port is None:
            raise KafkaBrokerError("broker has not been started yet")
        return self._port

    @property
    def controller_port(self) -> int:
        """KRaft controller port; fixed after the first start."""
        if self._controller_port is None:
            raise KafkaBrokerError("broker has not been started yet")
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``bootstrap_servers`` string for clients, e.g. ``127.0.0.1:40123``."""
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Directory with ``server.properties``, ``broker.log`` and ``data/``."""
        if self._data_dir is None:
            raise KafkaBrokerError("broker has not been started yet")
        return self._data_dir

    @property
    def jars_dir(self) -> Path:
        """Jar directory shared with ``scripts/kafka-broker``."""
        return JARS_DIR

    @property
    def pid(self) -> int | None:
        """Pid of the running broker JVM, or None."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while the broker process is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` of ``console.log`` and ``broker.log``, for error messages."""
        if self._data_dir is None:
            return "(no data dir yet)"
        parts = []
        for name in ("console.log", "broker.log"):
            path = self._data_dir / name
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            parts.append(f"--- {path} (tail) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no logs)"

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the broker and block until it serves metadata requests.

        On the first call this installs the jars if needed, picks free ports and
        creates the data directory; later calls (see :meth:`restart`) reuse all
        three. Readiness means a kafka-python admin client could connect and
        ``list_topics()`` succeeded, not merely that the port is open.

        Raises:
            KafkaBrokerUnavailable: Java or the jars cannot be obtained.
            KafkaBrokerError: The broker exited or was not ready within
                ``startup_timeout`` (it is killed in that case).
        """
        if self._closed:
            raise KafkaBrokerError("broker was closed")
        if self.is_running():
            return
        install_jars()
        if self._port is None:
            self._port = free_port()
        if self._controller_port is None:
            self._controller_port = free_port()
            while self._controller_port == self._port:
                self._controller_port = free_port()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="telltale-kafka-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)

        t0 = time.monotonic()
        with open(self._data_dir / "console.log", "ab") as console:
            self._proc = subprocess.Popen(
                [
                    "bash",
                    str(SCRIPT),
                    "run",
                    "--port",
                    str(self._port),
                    "--controller-port",
                    str(self._controller_port),
                    "--dir",
                    str(self._data_dir),
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(deadline=t0 + self.startup_timeout)
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        last_error: BaseException | None = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise KafkaBrokerError(
                    f"Kafka broker exited during startup (exit {code}).\n{self.log_tail()}"
                )
            if _port_open(self.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap,
                        client_id="telltale-test-readiness",
                        request_timeout_ms=5000,
                        bootstrap_timeout_ms=5000,
                    )
                    try:
                        admin.list_topics()
                    finally:
                        admin.close()
                    return
                except Exception as exc:  # not ready yet: retry until deadline
                    last_error = exc
            if time.monotonic() >= deadline:
                raise KafkaBrokerError(
                    f"Kafka broker at {self.bootstrap} not ready after "
                    f"{self.startup_timeout:.0f}s (last error: {last_error!r}).\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: SIGTERM, then SIGKILL after ``timeout`` seconds.

        A no-op if the broker is not running.
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker (an unclean crash) and reap it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or SIGKILL if ``hard``) and start again.

        The broker comes back on the same ports with the same data directory, so
        produced messages and committed offsets survive and clients can
        reconnect to the unchanged :attr:`bootstrap` address.
        """
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete the data dir if this object created it."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        atexit.unregister(self._kill_at_exit)

    def _kill_at_exit(self) -> None:
        # Last resort if the test process exits without close(): no stray JVM,
        # no stray temp dir.
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- admin

    def admin(self) -> KafkaAdminClient:
        """A new admin client for this broker; the caller must ``close()`` it."""
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="telltale-test-admin")

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int = 2,
        configs: Mapping[str, str] | None = None,
    ) -> None:
        """Create topics and wait until every partition has a leader.

        Args:
            names: Topic names to create (replication factor 1).
            partitions: Partitions per topic.
            configs: Optional topic configs, e.g. ``{"retention.ms": "-1"}``.
        """
        spec = {
            name: {
                "num_partitions": partitions,
                "replication_factor": 1,
                "configs": dict(configs or {}),
            }
            for name in names
        }
        if not spec:
            return
        admin = self.admin()
        try:
            admin.create_topics(spec, timeout_ms=30000, wait_for_metadata=True)
        finally:
            admin.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = self.bootstrap if self._port is not None else "unstarted"
        return f"<KafkaBroker {where} {state}>"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False
