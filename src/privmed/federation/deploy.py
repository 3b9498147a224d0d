"""Run the same Flower app on a real deployment: one ``flower-superlink`` and N ``flower-supernode``.

Helpers for the commands in ``docs/deployment.md`` and for the deployment test: TLS certificates made with
``openssl`` (a CA and a server certificate for ``127.0.0.1``/``localhost``), SuperNode key pairs
(``ssh-keygen``), starting the processes (each SuperNode with its own ``--port`` and
``--node-config "partition-id=i num-partitions=N"``), the ``$FLWR_HOME/config.toml`` entry ``flwr run``
needs, and stopping everything by PID (SuperNodes before the SuperLink, children included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from privmed.errors import PrivmedError

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Certificates:
    """Files made by :func:`make_certificates`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass
class Process:
    """A process we started, its role and its log file."""

    role: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def flower_env(flwr_home: str | Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every Flower process: no telemetry, no update check, no package installs."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    # the SuperLink and SuperNodes start their helpers (flower-superexec, flwr-serverapp ...) from PATH
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


def _run(cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise PrivmedError(f"{cmd[0]} is not installed; install it to make certificates or keys") from None
    if done.returncode != 0:
        raise PrivmedError(f"{' '.join(cmd[:3])} ... failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def make_certificates(out_dir: str | Path, *, days: int = 30) -> Certificates:
    """A self-made CA and a server certificate for ``127.0.0.1`` / ``localhost`` signed by it (openssl).

    For a real network, put the SuperLink's DNS name / IP in ``subjectAltName`` instead.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = out / "ca.key", out / "ca.crt"
    key, csr, crt = out / "server.key", out / "server.csr", out / "server.pem"
    ext = out / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
          "-days", str(days), "-subj", "/CN=privmed test CA"])  # fmt: skip
    _run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
          "-subj", "/CN=localhost"])  # fmt: skip
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
          "-out", str(crt), "-days", str(days), "-sha256", "-extfile", str(ext)])  # fmt: skip
    for private in (ca_key, key):
        private.chmod(0o600)
    return Certificates(ca_crt, crt, key)


def make_node_keys(out_dir: str | Path, count: int) -> list[tuple[Path, Path]]:
    """``count`` SuperNode key pairs (ECDSA P-384, ``ssh-keygen``): ``[(private, public), ...]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        private = out / f"node{i}"
        if not private.exists():
            _run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(private)])
        pairs.append((private, private.with_suffix(".pub")))
    return pairs


def port_owner(port: int) -> str:
    """Who listens on ``port`` (from ``ss``, when available), for error messages."""
    try:
        done = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5)
        line = done.stdout.strip().splitlines()
        if line:
            return line[0].split("users:")[-1].strip() if "users:" in line[0] else "another process"
    except (OSError, subprocess.SubprocessError):
        pass
    return "another process"


def check_port_free(port: int, *, host: str = "127.0.0.1", flag: str = "--port") -> None:
    """Raise a :class:`PrivmedError` naming the owner when ``host:port`` is already taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise PrivmedError(f"port {port} is in use by {port_owner(port)}; stop it or pass {flag}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 30.0, process: Process | None = None) -> None:
    """Block until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise PrivmedError(
                f"{process.role} exited with code {process.popen.returncode}; see {process.log_path}:\n"
                + process.log_path.read_text()[-1500:]
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise PrivmedError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _spawn(role: str, cmd: list[str], *, workdir: Path, env: Mapping[str, str]) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{role}.log"
    with log_path.open("wb") as fh:
        popen = subprocess.Popen(cmd, cwd=workdir, env=dict(env), stdout=fh, stderr=subprocess.STDOUT)
    log.info("started %s (pid %d): %s", role, popen.pid, " ".join(cmd))
    return Process(role, popen, log_path)


@dataclass
class Deployment:
    """A SuperLink and its SuperNodes on this machine; use as a context manager to stop them all.

    Parameters
    ----------
    workdir
        Logs, the SuperLink database and the processes' working directory.
    flwr_home
        ``FLWR_HOME`` for every process (and for ``flwr run``).
    certificates
        TLS material; ``None`` runs insecure (loopback first tries only).
    port
        The SuperLink's HTTPS port (Fleet and Control API).
    """

    workdir: Path
    flwr_home: Path
    certificates: Certificates | None = None
    port: int = 8000
    supernode_auth: bool = False
    processes: list[Process] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def _tls_args(self) -> list[str]:
        return [] if self.certificates is None else ["--root-certificates", str(self.certificates.ca_cert)]

    def start_superlink(self, *, timeout: float = 30.0) -> Process:
        """Start ``flower-superlink`` (checks the port first) and wait until it listens."""
        check_port_free(self.port)
        cmd = [str(BIN / "flower-superlink"), "--port", str(self.port)]
        if self.certificates is None:
            cmd.append("--insecure")
        else:
            c = self.certificates
            cmd += ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                    "--ssl-keyfile", str(c.server_key)]  # fmt: skip
        if self.supernode_auth:
            cmd += ["--enable-supernode-auth", "--database", str(self.workdir / "superlink.db")]
        proc = _spawn("superlink", cmd, workdir=self.workdir, env=self.env())
        self.processes.append(proc)
        wait_for_port(self.port, timeout=timeout, process=proc)
        return proc

    def start_supernode(
        self, partition_id: int, num_partitions: int, *, port: int | None = None, auth_key: Path | None = None
    ) -> Process:
        """Start one ``flower-supernode`` for ``partition_id`` with its own ClientApp port."""
        port = port or free_port()
        check_port_free(port, flag="another SuperNode --port")
        cmd = [
            str(BIN / "flower-supernode"),
            "--superlink",
            self.address,
            "--port",
            str(port),
            "--node-config",
            f"partition-id={partition_id} num-partitions={num_partitions}",
        ]
        cmd += ["--insecure"] if self.certificates is None else self._tls_args()
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        proc = _spawn(f"supernode-{partition_id}", cmd, workdir=self.workdir, env=self.env())
        self.processes.append(proc)
        return proc

    def write_flwr_config(self, name: str = "privmed") -> Path:
        """Add ``[superlink.<name>]`` for this SuperLink to ``$FLWR_HOME/config.toml`` (for ``flwr run . <name>``)."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        path = self.flwr_home / "config.toml"
        lines = [f"[superlink.{name}]", f'address = "{self.address}"']
        if self.certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.certificates.ca_cert.resolve()}"')
        existing = path.read_text() if path.exists() else '[superlink]\ndefault = "local"\n\n[superlink.local]\n' \
            'address = ":local:"\n'  # fmt: skip
        if f"[superlink.{name}]" not in existing:
            path.write_text(existing.rstrip() + "\n\n" + "\n".join(lines) + "\n")
        return path

    def register_supernode(self, public_key: Path, name: str = "privmed") -> None:
        """Allow a SuperNode's public key (``flwr supernode register``); needs ``supernode_auth`` and TLS."""
        _run([str(BIN / "flwr"), "supernode", "register", str(public_key), name], env=self.env())

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop every process started here by PID: SuperNodes first, then the SuperLink; children too."""
        nodes = [p for p in self.processes if p.role != "superlink"]
        links = [p for p in self.processes if p.role == "superlink"]
        for group in (nodes, links):
            stop_processes(group, timeout=timeout)
        self.processes = [p for p in self.processes if p.popen.poll() is None]

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_processes(processes: Sequence[Process], *, timeout: float = 15.0) -> None:
    """SIGTERM the processes and their descendants by PID, wait, then SIGKILL what is left."""
    pids: list[int] = []
    for proc in processes:
        if proc.popen.poll() is None:
            pids += descendants(proc.pid)
            pids.append(proc.pid)
    kill_pids(pids, timeout=timeout)
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=1)


def kill_pids(pids: Sequence[int], *, timeout: float = 15.0) -> None:
    """SIGTERM ``pids``, wait up to ``timeout`` seconds, SIGKILL the survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(pid_alive(p) for p in pids):
            return
