"""The same app on a real deployment: a SuperLink and 3 SuperNodes on loopback, with TLS, via `flwr run`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from privmed.config import load_config
from privmed.errors import PrivmedError
from privmed.federation.config_bridge import run_config_overrides
from privmed.federation.deploy import (
    BIN,
    Deployment,
    check_port_free,
    descendants,
    free_port,
    make_certificates,
    pid_alive,
)

REPO = Path(__file__).resolve().parents[2]


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PrivmedError, match=rf"port {port} is in use by .*; stop it or pass --port"):
            check_port_free(port)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the TLS certificates")
def test_tls_deployment_two_rounds(tmp_path: Path) -> None:
    flwr_home = tmp_path / "flwr-home"
    certs = make_certificates(tmp_path / "certs")
    out_dir = tmp_path / "run"
    dep = Deployment(workdir=tmp_path / "procs", flwr_home=flwr_home, certificates=certs, port=free_port())
    started: list[int] = []
    try:
        started.append(dep.start_superlink().pid)
        for i in range(3):
            started.append(dep.start_supernode(i, 3).pid)
        dep.write_flwr_config("tls")
        overrides = {
            "data.num_clients": 3,
            "data.options": "{ classes = 2, n_train = 360, n_val = 100, n_test = 100 }",
            "data.partitioner": "iid",
            "data.partition_options": "{}",
            "data.min_examples": 20,
            "federation.rounds": 2,
            "federation.min_fit_clients": 3,
            "run.out-dir": str(out_dir),
            "run.connect-timeout": 60.0,
        }
        done = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "tls", "--stream", "--run-config", run_config_overrides(overrides)],
            cwd=REPO,
            env=dep.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        logs = "\n".join(p.log_path.read_text()[-2000:] for p in dep.processes)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
        started += [pid for p in dep.processes for pid in descendants(p.pid)]
        results = json.loads((out_dir / "results.json").read_text())
    finally:
        dep.stop()
    assert not [pid for pid in started if pid_alive(pid)], "processes left running"
    assert results["status"] == "complete"
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["partition_sizes"] == [120, 120, 120]
    assert all(len(r["clients"]) == 3 and r["failures"] == 0 for r in results["rounds"])
    assert results["rounds"][-1]["val"]["loss"] < results["initial"]["val"]["loss"]
    assert results["rounds"][-1]["bytes_up"] > 0


def test_smoke_config_matches_pyproject_app_config() -> None:
    import tomllib

    from privmed.federation.config_bridge import flatten_config, run_config

    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "privmed.federation.server_app:app",
        "clientapp": "privmed.federation.client_app:app",
    }
    assert app["config"] == run_config(load_config(REPO / "configs" / "smoke.toml"))
    assert set(flatten_config(load_config(REPO / "configs" / "smoke.toml"))) <= set(app["config"])
