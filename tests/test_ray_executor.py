"""The Ray executor on a local Ray instance: the same run as the local engine, bit for bit."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedfleet.errors import FedfleetError
from fedfleet.runs import dump_config, load_config, load_model_vector
from fedfleet.runs._build import build_run, worker_run
from fedfleet.sim import TIMING_KEYS

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install -e '.[ray]'; CI installs it)",
)

SMALL = ["rounds=3", "data.num_clients=10", "strategy.clients_per_round=5"]


def _ray_log_tails(temp_dir: Path) -> str:
    """The last lines of the newest session's raylet and GCS logs: why a start-up failed."""
    logs = temp_dir / "session_latest" / "logs"
    tails = []
    for name in ("raylet.err", "raylet.out", "gcs_server.err", "gcs_server.out"):
        f = logs / name
        if f.is_file():
            lines = f.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {f}\n" + "\n".join(lines))
    return "\n".join(tails) or f"(no Ray logs under {logs})"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Ray's start-up waits a fixed 30 s for the raylet to register with its GCS and raises a
    # bare Exception when it does not ("The current node timed out during startup": CI, once),
    # or a RuntimeError when the GCS port file is late (a loaded 2-core machine, once). Try
    # three times, each in a fresh temp dir, with a small object store (the tests move
    # kilobytes) so that start-up allocates little; a failure shows Ray's own logs.
    failures = []
    for attempt in range(3):
        # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                logging_level="WARNING",
                object_store_memory=128 * 1024**2,
                _temp_dir=str(temp_dir),
            )
            break
        except Exception as e:  # Ray raises a bare Exception here
            failures.append(f"attempt {attempt + 1}: {e!r}\n{_ray_log_tails(temp_dir)}")
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
    else:
        pytest.fail("a local Ray instance did not start:\n" + "\n".join(failures))
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _fedfleet_run(
    out: Path, sets: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``fedfleet run -q`` in its own process with ``--set`` for each of ``sets``."""
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", "run", "-q", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(result):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in result.history]


@needs_ray
@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy.name=scaffold"],  # client state, payload and extras cross as raw arrays
        [
            "strategy.name=fedavg",
            "data.name=synthetic-population",
            "data.num_clients=100000",
            "data.max_samples=100",
        ],
    ],
)
def test_ray_run_is_bit_identical_to_the_local_sequential_run(local_ray, overrides):
    common = [*SMALL, *overrides]
    ref = build_run(load_config(None, [*common, "executor=sequential"])).simulation.run(3)
    pieces = build_run(load_config(None, [*common, "executor=ray", "worker_executor=sequential"]))
    assert pieces.executor == "ray (2 tasks a round on a local Ray instance, sequential in each)"
    got = pieces.simulation.run(3)
    assert np.array_equal(got.vector, ref.vector)
    assert _records(got) == _records(ref)


@needs_ray
def test_ray_with_compiled_tasks_is_bit_identical_to_compiled_in_process(local_ray):
    common = [*SMALL, "model.name=logreg"]
    ref = build_run(load_config(None, [*common, "executor=compiled"])).simulation.run(2)
    pieces = build_run(load_config(None, [*common, "executor=ray"]))
    assert pieces.executor.endswith("compiled in each)")
    got = pieces.simulation.run(2)
    assert np.array_equal(got.vector, ref.vector)
    assert _records(got) == _records(ref)


@needs_ray
def test_a_separate_driver_joins_the_cluster_at_ray_address(local_ray, tmp_path):
    # what the README's cluster recipe does: `fedfleet run` in its own process, pointed at a
    # running Ray cluster (here the module's local instance) by address
    address = local_ray.get_runtime_context().gcs_address
    sets = [*SMALL, "rounds=2", "executor=ray", "worker_executor=sequential"]
    proc = _fedfleet_run(tmp_path, [*sets, f"ray_address={address}"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"ray (2 tasks a round on {address}, sequential in each)" in " ".join(
        proc.stderr.split()
    )
    ref = build_run(load_config(None, [*SMALL, "rounds=2", "executor=sequential"])).simulation
    expected = ref.run(2)
    got = load_model_vector(tmp_path / "model.safetensors", expected.layout)
    assert np.array_equal(got, expected.vector)


@needs_ray
def test_a_failing_task_names_its_clients(local_ray):
    from fedfleet.client import FitInstructions
    from fedfleet.sim import RayExecutor
    from fedfleet.sim._cohort import ClientJob

    # the first test's config (its run is cached on the Ray workers already)
    cfg = load_config(
        None,
        [*SMALL, "strategy.name=scaffold", "worker_executor=sequential"],
    )
    sim = build_run(cfg).simulation
    # client 99 is not in the 10-client federation the Ray worker rebuilds from the config
    job = ClientJob(99, sim.federation.train_data(0), FitInstructions(), 1, None)
    setup = dump_config(cfg.model_copy(update={"executor": "sequential"}))
    ex = RayExecutor(setup, worker_run, num_tasks=1)
    with pytest.raises(FedfleetError, match=r"Ray task for clients \[99\]: IndexError"):
        ex.run(sim.strategy, sim.trainer, sim.trainer.init_vector(0), [job])


def test_fedfleet_imports_without_ray_and_names_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import fedfleet\n"
        "from fedfleet.runs._build import worker_run\n"
        "from fedfleet.runs._config import dump_config, load_config\n"
        "from fedfleet.sim._ray_executor import RayExecutor\n"
        "from fedfleet.errors import FedfleetError\n"
        "try:\n"  # refused when built, before a run starts, not at its first round
        "    RayExecutor(dump_config(load_config(None, [])), worker_run)\n"
        "except FedfleetError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "executor 'ray' needs ray, which is not installed: pip install 'fedfleet[ray]'"
    )


@needs_ray
def test_a_bad_ray_address_is_a_clear_error_naming_it(tmp_path):
    # its own process: the module's local Ray instance would be joined instead of the address
    sets = [*SMALL, "rounds=1", "executor=ray", "ray_address=127.0.0.1:notaport"]
    proc = _fedfleet_run(tmp_path, sets, timeout=120)
    assert proc.returncode != 0
    err = " ".join(proc.stderr.split())
    assert "could not join the Ray cluster at '127.0.0.1:notaport'" in err, proc.stderr
    assert "Traceback" not in proc.stderr


@needs_ray
def test_a_closed_port_fails_at_once_naming_the_address_and_the_cause(tmp_path):
    # was: Ray retried 20 times for 41 s each (830 s) and said only "Failed to connect"; the
    # subprocess limit would catch that
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    sets = [*SMALL, "rounds=1", "executor=ray", f"ray_address={address}"]
    proc = _fedfleet_run(tmp_path, sets, timeout=300)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert f"could not join the Ray cluster at '{address}'" in err, proc.stderr
    assert f"nothing is listening at {address} (connection refused)" in err
    assert "Traceback" not in proc.stderr


@needs_ray
def test_a_port_that_is_not_a_ray_head_fails_after_ray_connect_timeout_s(tmp_path):
    # a socket that accepts and never answers: Ray's own wait is bounded by the setting (with
    # Ray's defaults this took 830 s, past the subprocess limit)
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        sets = [*SMALL, "rounds=1", "executor=ray", f"ray_address={address}"]
        proc = _fedfleet_run(tmp_path, [*sets, "ray_connect_timeout_s=3"], timeout=300)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert f"could not join the Ray cluster at '{address}'" in err, proc.stderr
    assert "no Ray GCS answered within about 3 s (ray_connect_timeout_s)" in err


def _without_ray_auth(home: Path) -> dict[str, str]:
    """This process's environment with no Ray token anywhere (``~`` is ``home``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "HOME": str(home)}


@pytest.fixture
def token_head(tmp_path_factory):
    """A head as the README starts one (``ray start --head``) with token authentication on,
    in its own process, home and temp dir; yields its address and token."""
    token = secrets.token_hex(32)
    home = tmp_path_factory.mktemp("head_home")
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # AF_UNIX paths: keep short
    port, client_port, agent_port = _free_port(), _free_port(), _free_port()
    ray_cli = Path(sys.executable).parent / "ray"
    log_path = home / "head.log"
    env = {**_without_ray_auth(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    args = (
        f"start --head --block --port={port} --ray-client-server-port={client_port} "
        f"--dashboard-agent-listen-port={agent_port} --num-cpus=1 --include-dashboard=false "
        f"--temp-dir={temp_dir} --object-store-memory={128 * 1024**2}"
    ).split()
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [str(ray_cli), *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 240  # a loaded 2-core machine starts Ray slowly
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", token
    finally:
        head.terminate()  # --block: stops the head's processes too
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@needs_ray
def test_a_head_with_token_auth_is_named_and_joined_with_the_token(token_head, tmp_path):
    address, token = token_head
    home = tmp_path / "home"
    home.mkdir()
    sets = [*SMALL, "rounds=1", "executor=ray", "worker_executor=sequential"]
    sets.append(f"ray_address={address}")
    proc = _fedfleet_run(tmp_path / "a", sets, timeout=300, env=_without_ray_auth(home))
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert f"could not join the Ray cluster at '{address}'" in err, proc.stderr
    assert "the cluster requires an authentication token" in err
    assert "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=" in err
    # the README's recipe: the head's token in the environment
    env = {**_without_ray_auth(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    proc = _fedfleet_run(tmp_path / "b", sets, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
