"""The deployment files that cannot run here (no Docker, no Kubernetes) are checked so that
they do not rot: schemas, the Dockerfile lint, and every command and config they give the
services is one the entry points and the config loader accept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vebus.config import load_config
from vebus.runtime.service import parse_settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICES = ("collector", "filter", "dispatcher", "deadletter")
MANIFESTS = ["namespace", "collector", "filter", "dispatcher", "deadletter", "pdb"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, env=env)


def _dockerfile_targets() -> dict[str, str]:
    """target name -> its ENTRYPOINT line."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    targets: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if m := re.match(r"FROM \S+ AS (\S+)", line):
            current = m.group(1)
            targets[current] = ""
        elif line.startswith("ENTRYPOINT") and current:
            targets[current] = line
    return targets


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "compose.yaml").read_text()))


def test_compose_file_follows_the_compose_specification() -> None:
    out = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(REPO / "compose.yaml"))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_passes_hadolint() -> None:
    out = _run(str(BIN / "hadolint"), str(REPO / "deploy" / "Dockerfile"))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", MANIFESTS)
def test_kubernetes_manifests_are_valid(name: str) -> None:
    out = _run(str(BIN / "kubernetes-validate"), "-k", "1.31.0", "--strict",
               str(REPO / "deploy" / "k8s" / f"{name}.yaml"))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_kustomization_lists_every_manifest_and_the_config() -> None:
    k = yaml.safe_load((REPO / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(f"{m}.yaml" for m in MANIFESTS)
    for gen in k["configMapGenerator"]:
        for f in gen["files"]:
            assert (REPO / "deploy" / "k8s" / f).is_file()


def test_every_compose_service_runs_a_real_entry_point_with_a_valid_config() -> None:
    compose = _compose()
    targets = _dockerfile_targets()
    configs = {name: REPO / c["file"] for name, c in compose["configs"].items()}
    for path in configs.values():
        assert path.is_file(), path
    for svc in SERVICES:
        spec = compose["services"][svc]
        target = spec["build"]["target"]
        assert target in targets, f"{svc}: no Dockerfile target {target}"
        assert f'"vebus_{svc}"' in targets[target], f"{svc}: image does not run vebus_{svc}"
        assert (REPO / spec["build"]["dockerfile"]).is_file()
        assert "container_name" not in spec, "a fixed name stops --scale"
        assert "ports" not in spec, "a fixed host port stops --scale"
        settings = parse_settings(svc, spec["command"])  # argparse exits on a bad flag
        mounted = {c["target"]: configs[c["source"]] for c in spec["configs"]}
        config_file = mounted[settings.config_path]
        env = {k: str(v) for k, v in spec["environment"].items()}
        cfg = load_config(config_file, env)  # every ${VAR} it needs is in its environment
        assert cfg.nats.replicas == 3
        assert len(cfg.nats.servers()) == 3


def test_nats_cluster_config_is_valid_for_nats_server() -> None:
    compose = _compose()
    env = {k: str(v) for k, v in compose["services"]["nats-1"]["environment"].items()}
    for key, value in env.items():  # compose's ${VAR:-default}: take the default
        env[key] = re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", value)
    out = _run(str(BIN / "nats-server"), "-c", str(REPO / "deploy" / "nats" / "cluster.conf"),
               "-t", env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_kubernetes_deployment_runs_a_real_entry_point_with_a_valid_config() -> None:
    targets = _dockerfile_targets()
    for svc in SERVICES:
        doc = yaml.safe_load((REPO / "deploy" / "k8s" / f"{svc}.yaml").read_text())
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        image = container["image"].split(":")[0]
        assert image == f"vebus/{svc}"
        assert f'"vebus_{svc}"' in targets[svc]
        settings = parse_settings(svc, container["args"])
        assert settings.config_path.startswith(container["volumeMounts"][0]["mountPath"])
        env = {e["name"]: e.get("value", "from-a-secret") for e in container["env"]}
        assert env["VEBUS_HEALTH_PORT"] == str(container["ports"][0]["containerPort"])
        if svc != "collector":
            env.update(VCENTER_USER="x", VCENTER_PASSWORD="x")  # only the collector reads them
        load_config(REPO / "deploy" / "k8s" / "vebus.yaml", env)


def test_kubernetes_services_get_the_nats_tls_files_their_config_names() -> None:
    """vebus.yaml's nats.tls files are in the secret every Deployment mounts."""
    cfg = yaml.safe_load((REPO / "deploy" / "k8s" / "vebus.yaml").read_text())
    files = [Path(cfg["nats"]["tls"][k]) for k in ("ca_file", "cert_file", "key_file")]
    for svc in SERVICES:
        doc = yaml.safe_load((REPO / "deploy" / "k8s" / f"{svc}.yaml").read_text())
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert secrets.get("nats-tls") == "vebus-nats-tls", svc
        assert all(f.parent == Path(mounts["nats-tls"]) for f in files), svc
