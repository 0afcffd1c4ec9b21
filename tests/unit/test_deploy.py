"""The deployment files are checked so that they do not rot, also where they cannot run (no
Kubernetes here; tests/compose runs compose.yaml for real where Docker can run): schemas, the
Dockerfile lint, every command and config file they give the services is one the entry points
and the config loader accept, and compose.yaml's promises: images built locally with no
registry, no default passwords, the simulator where the config looks for it, NATS on
127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from vebus.config import load_config
from vebus.passwords import hash_secret
from vebus.runtime.service import parse_settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICES = ("collector", "filter", "dispatcher", "deadletter", "functions", "console")
MANIFESTS = [
    "namespace", "collector", "filter", "dispatcher", "deadletter", "functions", "console", "pdb"
]  # fmt: skip


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


def _deployment(svc: str) -> dict[str, Any]:
    """The Deployment of deploy/k8s/<svc>.yaml (the file may hold its Service too)."""
    docs = yaml.safe_load_all((REPO / "deploy" / "k8s" / f"{svc}.yaml").read_text())
    (doc,) = [d for d in docs if d["kind"] == "Deployment"]
    return dict(doc)


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "compose.yaml").read_text()))


def _images() -> dict[str, str]:
    """image -> its deploy/Dockerfile target, as deploy/compose/images.yaml builds them."""
    spec = yaml.safe_load((REPO / "deploy" / "compose" / "images.yaml").read_text())
    return {s["image"]: s["build"]["target"] for s in spec["services"].values()}


#: values of the right form for the variables that are checked for one
_SAMPLES = {
    "VEBUS_DLQ_TOKEN": "t" * 24,
    "VEBUS_CONSOLE_SESSION_KEY": "k" * 40,
    "VEBUS_CONSOLE_TOKEN_HASH": hash_secret("a-token", n=2),
}


def _with_values(value: str) -> str:
    """A compose.yaml value with every ${VAR...} replaced: its default, a sample of the
    form its variable needs, or "x"."""
    value = re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: _SAMPLES.get(m.group(1), "x"), value)


@pytest.mark.parametrize("path", ["compose.yaml", "deploy/compose/images.yaml"])
def test_compose_files_follow_the_compose_specification(path: str) -> None:
    out = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(REPO / path))  # fmt: skip
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
    images = _images()
    configs = {name: REPO / c["file"] for name, c in compose["configs"].items()}
    for path in configs.values():
        assert path.is_file(), path
    for svc in SERVICES:
        spec = compose["services"][svc]
        target = images[spec["image"]]
        assert target in targets, f"{svc}: no Dockerfile target {target}"
        assert f'"vebus_{svc}"' in targets[target], f"{svc}: image does not run vebus_{svc}"
        assert "container_name" not in spec, "a fixed name stops --scale"
        if svc != "console":  # the console's page is published: one replica under compose
            assert "ports" not in spec, "a fixed host port stops --scale"
        settings = parse_settings(svc, spec["command"])  # argparse exits on a bad flag
        mounted = {c["target"]: configs[c["source"]] for c in spec["configs"]}
        config_file = mounted[settings.config_path]
        env = {k: _with_values(str(v)) for k, v in spec["environment"].items()}
        # every ${VAR} the service needs is in its own environment (the collector's vCenter
        # login too: vebus.yaml has no fallback value)
        cfg = load_config(config_file, env, service=svc)
        assert cfg.nats.replicas == 3
        assert len(cfg.nats.servers()) == 3


def test_every_image_compose_runs_is_built_locally_with_no_network() -> None:
    compose, images = _compose(), _images()
    spec = yaml.safe_load((REPO / "deploy" / "compose" / "images.yaml").read_text())
    for name, svc in spec["services"].items():
        assert svc["build"]["network"] == "none", f"images.yaml {name}: RUN with network"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    for name, svc in compose["services"].items():
        if "observability" in svc.get("profiles", []):
            continue  # Prometheus, Grafana, Jaeger: from a registry, and said so
        assert svc["image"] in images, f"{name}: {svc['image']} is not built by scripts/images"
        assert svc.get("pull_policy") == "never", f"{name}: would try a registry"
        assert "build" not in svc, f"{name}: built by scripts/images, not by compose.yaml"
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "# syntax=" not in dockerfile, "a syntax line makes BuildKit pull its frontend"
    stages = set(_dockerfile_targets())
    for line in dockerfile.splitlines():
        if m := re.match(r"FROM (\S+)", line):
            assert m.group(1) in stages | {"${BASE_IMAGE}"}, f"FROM a registry image: {line}"
        assert "apt-get" not in line, f"apt in an image build needs the network: {line}"
    assert "ARG BASE_IMAGE=vebus/base:bookworm" in dockerfile


def test_dockerignore_lets_in_only_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything out first (.git, .venv, .vebus, .env, ...)"
    assert all(line.startswith("!build/") for line in lines[1:]), lines
    copied = re.findall(r"^COPY (build/\S+)", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
    assert sorted(copied) == sorted(line[1:] for line in lines[1:])


def test_compose_refuses_to_start_without_its_passwords() -> None:
    text = (REPO / "compose.yaml").read_text()
    secrets = re.findall(
        r"\$\{(VEBUS_NATS_\w+_PASSWORD|VCENTER_\w+|VEBUS_DLQ_TOKEN|VEBUS_CONSOLE_SESSION_KEY"
        r"|VEBUS_CONSOLE_TOKEN_HASH)(:?[-?]?)",
        text,
    )
    assert secrets
    lax = sorted({name for name, op in secrets if op != ":?"})
    assert not lax, f"compose.yaml gives these a default (or none) instead of ${{VAR:?...}}: {lax}"
    vebus_yaml = (REPO / "deploy" / "compose" / "vebus.yaml").read_text()
    assert ":-" not in vebus_yaml, "deploy/compose/vebus.yaml must not fall back to a value"
    env_example = (REPO / "deploy" / "compose" / "env.example").read_text()
    for name, _ in secrets:
        if name == "VEBUS_CONSOLE_TOKEN_HASH":  # appended by the command env.example gives
            assert f"vebus console token --env {name} >> .env" in env_example
            continue
        assert re.search(rf"^{name}=$", env_example, re.M), f"env.example lacks {name}="


def test_compose_publishes_on_the_loopback_only_and_the_simulator_is_where_vebus_looks() -> None:
    compose = _compose()
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert _with_values(str(port)).startswith("127.0.0.1:"), f"{name}: {port}"
    vcsim = compose["services"]["vcsim"]
    config = yaml.safe_load((REPO / "deploy" / "compose" / "vebus.yaml").read_text())
    (vcenter,) = config["vcenters"]
    url = urlsplit(vcenter["url"])
    listen = vcsim["command"][vcsim["command"].index("-listen") + 1]
    assert url.hostname == "vcsim", url
    assert str(url.port) == listen.rsplit(":", 1)[1], (url, listen)
    assert listen.startswith("0.0.0.0:"), "the simulator must listen beyond its loopback"
    assert url.scheme == ("https" if "-tls" in vcsim["command"] else "http"), url
    # the simulator requires the login the collector is given
    collector_env = compose["services"]["collector"]["environment"]
    assert vcsim["environment"]["VCSIM_USERNAME"] == collector_env["VCENTER_USER"]
    assert vcsim["environment"]["VCSIM_PASSWORD"] == collector_env["VCENTER_PASSWORD"]
    assert vcenter["username"] == "${VCENTER_USER}"
    assert vcenter["password"] == "${VCENTER_PASSWORD}"


def test_nats_cluster_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    """cluster.conf as compose mounts it: auth.conf beside it, the TLS files where compose
    puts them (here, made by `vebus tls init`'s code in a temporary folder)."""
    from vebus.local.tls import ensure_local_tls

    compose = _compose()
    env = {k: _with_values(str(v)) for k, v in compose["services"]["nats-1"]["environment"].items()}
    tls = ensure_local_tls(tmp_path / "tls", ("nats-1", "nats-2", "nats-3"))
    conf = (REPO / "deploy" / "nats" / "cluster.conf").read_text()
    assert conf.count('"/etc/nats/tls/') == 6  # clients and routes: cert, key, CA each
    (tmp_path / "cluster.conf").write_text(conf.replace("/etc/nats/tls", str(tls.folder)))
    (tmp_path / "auth.conf").write_text((REPO / "deploy" / "nats" / "auth.conf").read_text())
    out = _run(str(BIN / "nats-server"), "-c", str(tmp_path / "cluster.conf"), "-t", env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_kubernetes_deployment_runs_a_real_entry_point_with_a_valid_config() -> None:
    targets = _dockerfile_targets()
    for svc in SERVICES:
        doc = _deployment(svc)
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        image = container["image"].split(":")[0]
        assert image == f"vebus/{svc}"
        assert f'"vebus_{svc}"' in targets[svc]
        settings = parse_settings(svc, container["args"])
        assert settings.config_path.startswith(container["volumeMounts"][0]["mountPath"])
        env = {
            e["name"]: e.get("value", _SAMPLES.get(e["name"], "from-a-secret"))
            for e in container["env"]
        }
        assert env["VEBUS_HEALTH_PORT"] == str(container["ports"][0]["containerPort"])
        # every ${VAR} the service needs is in its own environment
        load_config(REPO / "deploy" / "k8s" / "vebus.yaml", env, service=svc)


def test_kubernetes_services_get_the_nats_tls_files_their_config_names() -> None:
    """vebus.yaml's nats.tls files are in the secret every Deployment mounts."""
    cfg = yaml.safe_load((REPO / "deploy" / "k8s" / "vebus.yaml").read_text())
    files = [Path(cfg["nats"]["tls"][k]) for k in ("ca_file", "cert_file", "key_file")]
    for svc in SERVICES:
        spec = _deployment(svc)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert secrets.get("nats-tls") == "vebus-nats-tls", svc
        assert all(f.parent == Path(mounts["nats-tls"]) for f in files), svc
