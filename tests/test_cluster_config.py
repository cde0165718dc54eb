"""cluster.yaml: valid for Ray's cluster launcher, and secure by construction.

Validated against the JSON schema shipped inside the Ray wheel (`ray/autoscaler/ray-schema.json`)
and through Ray's own config preparation (`prepare_config` + `validate_config`, what `ray up`
runs before it contacts any cloud). The on-premises variant lives in comments at the end of
cluster.yaml (between `# BEGIN local provider` and `# END local provider`); it is extracted,
swapped in for the cloud-specific blocks and validated the same way.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import subprocess

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

from conftest import REPO  # noqa: E402

CLUSTER_YAML = REPO / "cluster.yaml"
LOOPBACK = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((importlib.resources.files("ray.autoscaler") / "ray-schema.json").read_text())


def local_variant(text: str, config: dict) -> dict:
    """The commented on-premises block, applied as cluster.yaml's comment says."""
    match = re.search(r"^# BEGIN local provider\n(.*?)^# END local provider", text, re.M | re.S)
    assert match, "cluster.yaml lost its commented local-provider variant"
    lines = match.group(1).splitlines()
    assert all(line.startswith("#") for line in lines)
    block = yaml.safe_load("\n".join(line[2:] for line in lines))
    variant = {k: v for k, v in copy.deepcopy(config).items()
               if k not in ("available_node_types", "head_node_type")}
    variant.update(block)
    return variant


def strings(node) -> list[str]:
    """Every key and string value in a parsed YAML tree."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


# -- validity ---------------------------------------------------------------------------------

def test_cluster_yaml_matches_rays_schema(config, schema):
    jsonschema.validate(config, schema)


def test_cluster_yaml_passes_rays_own_preparation(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_local_provider_variant_is_valid(text, config, schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    variant = local_variant(text, config)
    assert variant["provider"]["type"] == "local"
    assert variant["provider"]["head_ip"] and variant["provider"]["worker_ips"]
    jsonschema.validate(variant, schema)
    prepared = prepare_config(variant)  # aborts on fields the local provider does not support
    validate_config(prepared)
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["max_workers"] == len(variant["provider"]["worker_ips"])


def test_every_command_is_valid_bash(config):
    for cmd in all_commands(config):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd!r}: {result.stderr}"


# -- what the cluster looks like --------------------------------------------------------------

def test_head_runs_no_trials_and_workers_have_gpus(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    # the on-premises variant has no per-node-type resources: the start command says it too
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--num-gpus=0" in head_start
    workers = [n for key, n in nodes.items() if key != config["head_node_type"]]
    assert workers and all(n["resources"].get("GPU", 0) >= 1 for n in workers)
    assert all(0 <= n["min_workers"] <= n["max_workers"] <= config["max_workers"]
               for n in workers)
    assert any(n["max_workers"] > n["min_workers"] for n in workers)  # autoscaling


def test_setup_installs_featloss_and_pinned_versions(config):
    import ray
    import torch

    setup = " ".join(config["setup_commands"])
    ray_pin = re.search(r"ray\[default\]==([\w.]+)", setup)
    torch_pin = re.search(r"\btorch==([\w.]+)", setup)
    assert ray_pin and ray_pin.group(1) == "2.60.0" == ray.__version__
    assert torch_pin and torch_pin.group(1) == "2.14.1" == torch.__version__.split("+")[0]
    assert re.search(r"\btorchvision==[\w.]+", setup)
    assert "pip install -q ~/featloss" in setup


def test_file_mounts_send_the_package_and_nothing_else(config):
    mounts = config["file_mounts"]
    assert {"~/featloss/pyproject.toml", "~/featloss/featloss"} <= set(mounts)
    for remote, local in mounts.items():
        assert remote.startswith("~/featloss/")
        path = (REPO / local).resolve()
        assert path.exists() and path != REPO  # never the whole checkout (.venv, results)
        assert path.relative_to(REPO).parts[0] not in (".venv", "mlruns", ".git")
    # pyproject's readme must travel with it, or `pip install ~/featloss` fails
    import tomllib

    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert f"~/featloss/{readme}" in mounts


# -- security ---------------------------------------------------------------------------------

def test_no_port_open_to_the_world(text, config):
    assert "0.0.0.0" not in text and "::/0" not in text
    # Ray's automatic security group always allows SSH from anywhere: every node type must
    # name its own group instead.
    for key, node in config["available_node_types"].items():
        assert node["node_config"].get("SecurityGroupIds"), f"{key} uses Ray's default group"
    assert "security_group" not in config["provider"]
    # dashboard only on the loopback interface; reached through `ray dashboard` (SSH tunnel)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"(?i)aws_(access_key_id|secret_access_key|session_token)",
    r"(?i)\b\w*(password|passwd|secret|token|api_key|apikey)\w*\s*[:=]\s*\S",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",  # user:password@ in a URI
]


def test_no_credentials_in_the_file(text, config):
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), pattern
    for section in (config["auth"], local_variant(text, config)["auth"]):
        key = section.get("ssh_private_key")
        assert key is None or ("\n" not in key and key.startswith(("~", "/")))  # a path only
    mounts = " ".join(f"{k} {v}" for k, v in config["file_mounts"].items())
    assert ".aws" not in mounts and ".ssh" not in mounts


def test_storage_and_tracking_uri_come_from_the_environment(config):
    values = strings(config)
    assert not [v for v in values if "s3://" in v]  # no bucket written into the file
    for value in values:
        for host in re.findall(r"https?://([^/:\s\"']+)", value):
            assert host in LOOPBACK, value  # only the head-local MLflow default
    env_cmd = next(c for c in config["setup_commands"] if "~/.featloss_env" in c)
    assert 'FEATLOSS_STORAGE="${FEATLOSS_STORAGE:-' in env_cmd
    assert 'MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-' in env_cmd


def test_env_file_takes_values_from_the_environment(config, tmp_path):
    """Run the env-file setup command in a scratch HOME; the file then honours the environment."""
    env_cmd = next(c for c in config["setup_commands"] if "~/.featloss_env" in c)
    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home), "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", env_cmd], env=base, check=True)
    assert "source ~/.featloss_env" in (home / ".bashrc").read_text()
    show = 'source ~/.featloss_env; echo "$FEATLOSS_STORAGE|$MLFLOW_TRACKING_URI|$FEATLOSS_DATA"'
    defaults = subprocess.run(["bash", "-c", show], env=base, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert defaults == "/shared/results|http://127.0.0.1:5000|/shared/data"
    given = {**base, "FEATLOSS_STORAGE": "s3://bucket/featloss",
             "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000"}
    chosen = subprocess.run(["bash", "-c", show], env=given, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert chosen == "s3://bucket/featloss|http://10.0.0.5:5000|/shared/data"
    # running setup again (ray up twice) adds nothing twice
    subprocess.run(["bash", "-c", env_cmd], env=base, check=True)
    assert (home / ".bashrc").read_text().count("featloss_env") == 1


def test_cluster_yaml_is_fully_commented(text):
    """Every top-level block has a comment line right above it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            assert i > 0 and lines[i - 1].startswith("#"), f"uncommented block: {line}"


# -- the GPU packing benchmark (bench/gpu_packing.py) runs only on a GPU ------------------------

def test_gpu_benchmark_parses_arguments_and_exits_cleanly_without_a_gpu():
    import sys

    script = str(REPO / "bench" / "gpu_packing.py")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # as on a machine without a GPU
    usage = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert usage.returncode == 0 and "--trials" in usage.stdout and "--workers" in usage.stdout
    bad = subprocess.run([sys.executable, script, "--epochs", "1"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--epochs must be >= 2" in bad.stderr
    run = subprocess.run([sys.executable, script, "--trials", "1,2,4"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "no CUDA device" in run.stderr and "Traceback" not in run.stderr
