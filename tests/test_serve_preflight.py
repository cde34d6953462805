"""`star-deploy serve` refuses bad settings before Ray starts (exit 2, one line, Ray never imported); typed options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="needs the serve extra: pip install 'star-deploy[serve]'")

import onnxruntime  # noqa: E402
from ray.serve._private.build_app import build_app as built_app  # noqa: E402
from serve_helpers import free_port  # noqa: E402

from star_deploy.errors import ConfigError  # noqa: E402
from star_deploy.serve.app import build_app, replica_count  # noqa: E402
from star_deploy.serve.options import ServeOptions  # noqa: E402
from star_deploy.serve.preflight import check_placement, local_cpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def run_serve(*args: str, cwd: Path) -> tuple[int, list[str], list[str]]:
    """Exit code, stderr lines and the modules imported by ``star-deploy serve ARGS`` (killed after 60 s).

    ``python -X importtime`` writes one ``import time:`` line per module imported to stderr; they are
    split from the command's own lines.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "star_deploy", "serve", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    modules = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    return done.returncode, [line for line in lines if not line.startswith("import time:")], modules


@pytest.fixture(scope="module")
def busy_port():
    """A port something listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def cases(busy: int, port: str, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """By name: (arguments, words the one-line error must contain); ``port`` is a free one."""
    return {
        "busy-port": (["--port", str(busy)], f"port {busy} is in use"),
        "port-above": (["--port", "70000"], "--port 70000: out of range"),
        "port-0": (["--port", "0"], "--port 0: out of range"),
        "foreign-host": (["--port", port, "--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
        "unknown-host": (["--port", port, "--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot be"),
        "missing-artifacts": (["--port", port, "--artifacts", str(tmp / "missing")], "--artifacts"),
        "backend": (["--port", port, "--backend", "foo"], "--backend: unknown backend 'foo'; choose one of"),
        "device-cuda": (["--port", port, "--device", "cuda"], "--device cuda"),
        "device-gpu": (["--port", port, "--device", "gpu"], "--device: unknown device 'gpu'"),
        "empty-weights": (["--port", port, "--weights", str(tmp)], "holds no STAR release"),
        "missing-weights": (["--port", port, "--weights", str(tmp / "missing")], "no such folder"),
        "drain-timeout": (["--port", port, "--drain-timeout", "-1"], "--drain-timeout -1"),
        "replicas": (["--port", port, "--replicas", "0"], "--replicas"),
        "num-cpus": (["--port", port, "--num-cpus", "-1"], "--num-cpus"),
        "max-replicas": (["--port", port, "--replicas", "2", "--max-replicas", "1"], "exceeds max_replicas"),
        "placement": (["--port", port, "--replicas", "2", "--num-cpus", str(local_cpus())], "need"),
        "batch-wait-inf": (["--port", port, "--batch-wait", "inf"], "--batch-wait: Input should be a finite number"),
        "batch-wait-huge": (["--port", port, "--batch-wait", "1e300"], "--batch-wait: Input should be less than or"),
        "dtype-on-onnxruntime": (["--port", port, "--dtype", "float32"], "dtype applies to backend='torch', not to"),
    }


CUDA_IS_VALID = pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="onnxruntime has CUDA here: --device cuda is valid")
CASE_NAMES = [
    pytest.param(name, marks=CUDA_IS_VALID) if name == "device-cuda" else name for name in cases(0, "0", Path())
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_settings_exit_2_with_one_line_before_ray_starts(busy_port, tmp_path, name):
    """Refused in one line, and before Ray is imported: a refusal never waits for Ray to start."""
    args, words = cases(busy_port, str(free_port()), tmp_path)[name]
    code, lines, modules = run_serve(*args, cwd=tmp_path)
    assert code == 2, (args, lines[-20:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines[-20:])
    assert words in lines[0], (args, lines[0])
    assert "unexpected" not in lines[0]
    assert "star_deploy.cli" in modules, "no import was recorded"
    assert [m for m in modules if m.split(".")[0] == "ray"] == [], "Ray was imported before the refusal"


def test_placement_refuses_what_ray_cannot_place():
    options = ServeOptions(replicas=3, num_cpus=1)
    with pytest.raises(ConfigError, match=r"need 3 CPUs but Ray has 2 here \(room for 2\)"):
        check_placement(options, cpus=2, gpus=0)
    check_placement(ServeOptions(replicas=4, num_cpus=0.5), cpus=2, gpus=0)
    with pytest.raises(ConfigError, match="GPUs"):
        check_placement(ServeOptions(device="cuda", num_gpus=0.5, replicas=3), cpus=8, gpus=1)
    autoscaled = ServeOptions(num_cpus=1, autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    check_placement(autoscaled, cpus=2, gpus=0)


def test_placement_counts_the_gpus_a_local_ray_would_see(monkeypatch):
    from star_deploy.serve.preflight import local_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus() == 0
    with pytest.raises(ConfigError, match=r"--num-gpus 1 need 1 GPUs but Ray has 0 here"):
        check_placement(ServeOptions(device="cuda", num_gpus=1), cpus=8, gpus=local_gpus())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_gpus() == 2


def deployments(app) -> tuple:
    """The ingress and the model deployment of an application, as `serve run` and `serve deploy` build them."""
    built = built_app(app, name="star")
    by_name = {d.name: d for d in built.deployments}
    assert built.ingress_deployment_name == "StarIngress" and set(by_name) == {"StarIngress", "StarReplica"}
    return by_name["StarIngress"], by_name["StarReplica"]


def test_build_app_takes_serve_run_strings():
    """``serve run star_deploy.serve.app:build_app replicas=2 num_cpus=0.5`` passes strings."""
    options = ServeOptions.parse({"replicas": "2", "num_cpus": "0.5", "max_batch_size": "4", "batch_wait_s": "0"})
    assert (options.replicas, options.num_cpus, options.max_batch_size, options.batch_wait_s) == (2, 0.5, 4, 0.0)
    assert replica_count(options) == {"num_replicas": 2}
    ingress, replica = deployments(build_app({"replicas": "2", "num_cpus": "0.5", "max_batch_size": "4"}))
    assert (replica.num_replicas, replica.ray_actor_options) == (2, {"num_cpus": 0.5, "num_gpus": 0.0})
    assert replica.init_args[0].max_batch_size == 4 and ingress.init_args[1] == replica.init_args[0]


def test_build_app_takes_a_config_file_mapping():
    """A ``serve deploy`` YAML's ``args``, nested autoscaling included."""
    args = {
        "artifacts": None,
        "num_cpus": 1,
        "max_batch_size": 16,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    }
    ingress, replica = deployments(build_app(args))
    assert replica.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
    autoscaling = replica._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 4, 8)
    assert replica.init_args[0].max_batch_size == 16 and ingress.ray_actor_options == {"num_cpus": 0}
    options = ServeOptions.parse(args)
    assert replica_count(options) == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0}
    }
    assert (options.min_replicas, options.max_replicas) == (1, 4)


@pytest.mark.parametrize(
    "args, words",
    [
        ({"replica": 2}, "serve option replica: Extra inputs are not permitted; known: backend"),
        ({"replicas": "two"}, "serve option replicas: Input should be a valid integer"),
        ({"max_batch_size": 0}, "serve option max_batch_size: Input should be greater than or equal to 1"),
        ({"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas 3 exceeds max_replicas 2"),
        ({"num_gpus": 1}, "num_gpus > 0 with device cpu"),
        ({"backend": "foo"}, "serve option backend: unknown backend 'foo'"),
        ({"device": "gpu"}, "serve option device: unknown device 'gpu'"),
        ({"batch_wait_s": "inf"}, "serve option batch_wait_s: Input should be a finite number"),
        ({"batch_wait_s": 1e300}, "serve option batch_wait_s: Input should be less than or equal to 60"),
        ({"num_cpus": float("nan")}, "serve option num_cpus: Input should be a finite number"),
        ({"num_gpus": "inf", "device": "cuda"}, "serve option num_gpus: Input should be a finite number"),
        ({"retries": 10**9}, "serve option retries: Input should be less than or equal to 100"),
        ({"max_ongoing_requests": 10**12}, "serve option max_ongoing_requests: Input should be less than or equal"),
        ({"max_batch_size": 10**6}, "serve option max_batch_size: Input should be less than or equal to 1024"),
        ({"replicas": 10**6}, "serve option replicas: Input should be less than or equal to 1024"),
        ({"dtype": "float64"}, "serve option dtype: unknown dtype 'float64'"),
        ({"autoscaling_config": {"target_ongoing_requests": "inf"}}, "target_ongoing_requests: Input should be a fin"),
        (
            {"replicas": 3, "autoscaling_config": {"max_replicas": 4}},
            "replicas and autoscaling_config both given",
        ),
    ],
)
def test_bad_options_name_the_setting(args, words):
    with pytest.raises(ConfigError) as caught:
        build_app(args)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("replicas", "max_replicas", "words"),
    [(-1, 2, "--replicas: "), (2, 5000, "--max-replicas: "), (3, 2, "--max-replicas: min_replicas 3 exceeds")],
)
def test_autoscaling_errors_name_the_option_that_set_the_value(replicas, max_replicas, words):
    from star_deploy.commands.serve import options
    from star_deploy.runtime.plan import LoadOptions

    with pytest.raises(ConfigError) as error:
        options(LoadOptions(), replicas, 1.0, 0.0, 4, 0.05, max_replicas)
    assert str(error.value).startswith(words), str(error.value)
