"""deploy/ cannot run here (no Docker daemon, no cluster), so these tests keep it valid and in step with the code:
the YAML parses without duplicate keys, references between objects resolve, every environment variable the
manifests set is one the code reads (and the required ones are set everywhere), probes hit real URLs, the
images copy files that exist, and nginx proxies WebSockets with the upload limit the settings use.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

# Variables the manifests may set although our code never reads them, and who reads them instead.
EXTERNAL_ENV = {
    "DJANGO_SETTINGS_MODULE": "Django and Celery find backend.settings through it",
    "PYTHONUNBUFFERED": "Python: logs leave the container at once",
    "PYTHONDONTWRITEBYTECODE": "Python: no .pyc files in the image layers",
    "PIP_NO_CACHE_DIR": "pip, at image build time",
    "NVIDIA_VISIBLE_DEVICES": "NVIDIA container toolkit",
    "NVIDIA_DRIVER_CAPABILITIES": "NVIDIA container toolkit",
    "CUDA_VISIBLE_DEVICES": "CUDA runtime: one GPU per worker process",
    "POSTGRES_DB": "the postgres image's initialisation",
    "POSTGRES_USER": "the postgres image's initialisation",
    "POSTGRES_PASSWORD": "the postgres image, and compose interpolation into DATABASE_URL",
}

# What every application container (web, workers, migrate) must receive in distributed production mode.
REQUIRED_ENV = {"DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL"}

ENV_READ_PATTERNS = [
    re.compile(r"\benv_(?:str|bool|int|float|list|secret|path)\(\s*\"([A-Z][A-Z0-9_]*)\""),
    re.compile(r"os\.environ(?:\.get|\.setdefault)?\(\s*\"([A-Z][A-Z0-9_]*)\""),
    re.compile(r"os\.environ\[\"([A-Z][A-Z0-9_]*)\"\]"),
    re.compile(r"os\.getenv\(\s*\"([A-Z][A-Z0-9_]*)\""),
    # annotator/services/propagation.py: a Django setting, else the environment variable of that name.
    re.compile(r"\b_setting\(\s*\"([A-Z][A-Z0-9_]*)\""),
]


# --- loading ------------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a duplicated key in a manifest is always a bug."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_StrictLoader) if doc is not None]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_objects() if doc.get("kind") == kind]


def compose() -> dict[str, Any]:
    return load_all(DEPLOY / "docker-compose.yml")[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("Deployment", "Job"):
        for doc in of_kind(kind):
            yield f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def names_read_by_code() -> set[str]:
    names: set[str] = set()
    for folder in ("backend", "annotator", "ml"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(errors="replace")
            for pattern in ENV_READ_PATTERNS:
                names.update(pattern.findall(text))
    return names


# --- YAML validity and references ----------------------------------------------------------------------------


def test_every_yaml_file_parses_without_duplicate_keys() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10, files
    for path in files:
        assert load_all(path), f"{path} is empty"


def test_duplicate_keys_are_caught_by_the_loader() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'image'"):
        yaml.load("a:\n  image: x\n  image: y\n", Loader=_StrictLoader)


KNOWN_API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "Ingress": "networking.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


def test_k8s_objects_have_kind_api_version_and_name() -> None:
    for path, doc in k8s_objects():
        kind = doc.get("kind")
        assert kind in KNOWN_API_VERSIONS, f"{path.name}: unexpected kind {kind}"
        assert doc.get("apiVersion") == KNOWN_API_VERSIONS[kind], f"{path.name}: {kind} apiVersion"
        if kind != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path.name


def test_kustomization_lists_every_manifest_except_the_secret_example() -> None:
    (kustomization,) = of_kind("Kustomization")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for _, spec in pod_specs() for c in spec["containers"]}
    assert used <= images, f"images without a kustomize mapping: {used - images}"


def test_deployment_selectors_services_ingress_and_hpas_resolve() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    assert {"proplabel-web", "proplabel-worker-gpu", "proplabel-worker-io"} <= set(deployments)
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name}: selector does not match its pods"

    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for name, service in services.items():
        targets = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert targets, f"Service {name} selects no Deployment"
        ports = {
            p.get("name")
            for c in targets[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"Service {name}: targetPort {port['targetPort']} not a container port"
            )

    for ingress in of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services
                assert backend["port"]["name"] in {
                    p["name"] for p in services[backend["name"]]["spec"]["ports"]
                }

    for hpa in of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_pods_reference_existing_config_secret_and_volume_claim() -> None:
    configmaps = {c["metadata"]["name"] for c in of_kind("ConfigMap")}
    secrets = {s["metadata"]["name"] for s in of_kind("Secret")}
    claims = {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")}
    for where, spec in pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount {mount['name']} has no volume"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where


def test_gpu_workers_request_a_gpu_and_consume_the_gpu_queue() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    (gpu,) = deployments["proplabel-worker-gpu"]["spec"]["template"]["spec"]["containers"]
    # Extended resources must be equal in requests and limits, or the scheduler rejects the pod.
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "1", "one model per process"
    (io,) = deployments["proplabel-worker-io"]["spec"]["template"]["spec"]["containers"]
    assert io["command"][io["command"].index("--queues") + 1] == "io"
    assert "nvidia.com/gpu" not in io["resources"].get("requests", {})
    compose_gpu = compose()["services"]["worker-gpu"]
    (device,) = compose_gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert compose_gpu["command"][compose_gpu["command"].index("--queues") + 1] == "gpu"


def test_web_probes_hit_the_health_views_with_an_allowed_host() -> None:
    from django.urls import resolve

    from annotator import observability

    (web,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "proplabel-web"]
    (container,) = web["spec"]["template"]["spec"]["containers"]
    (config,) = of_kind("ConfigMap")
    allowed = config["data"]["DJANGO_ALLOWED_HOSTS"].split(",")
    views = {"startupProbe": observability.healthz, "livenessProbe": observability.healthz,
             "readinessProbe": observability.readyz}  # fmt: skip
    for probe, view in views.items():
        http_get = container[probe]["httpGet"]
        assert resolve(http_get["path"].split("?")[0]).func is view, probe
        hosts = [h["value"] for h in http_get.get("httpHeaders", []) if h["name"].lower() == "host"]
        # Without an allowed Host header Django answers 400 and the pod never becomes ready.
        assert hosts and hosts[0] in allowed, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?skip=workers"


# --- environment variables: set <=> read -------------------------------------------------------------------


def k8s_env_sets() -> dict[str, set[str]]:
    """Container -> the names it receives (envFrom ConfigMap/Secret keys and explicit env)."""
    configmaps = {c["metadata"]["name"]: set(c["data"]) for c in of_kind("ConfigMap")}
    secrets = {
        s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {}))
        for s in of_kind("Secret")
    }
    result = {}
    for where, spec in pod_specs():
        for container in spec["containers"]:
            names = {item["name"] for item in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= configmaps[source["configMapRef"]["name"]]
                if "secretRef" in source:
                    names |= secrets[source["secretRef"]["name"]]
            result[f"{where}/{container['name']}"] = names
    return result


APP_SERVICES = ("migrate", "web", "worker-gpu", "worker-gpu-cpu", "worker-io")


def compose_env_sets() -> dict[str, set[str]]:
    from_file = set(env_file(DEPLOY / ".env.example"))
    services = compose()["services"]
    return {name: set(services[name].get("environment", {})) | from_file for name in APP_SERVICES}


def dockerfile_env(path: Path) -> set[str]:
    text = path.read_text().replace("\\\n", " ")
    names: set[str] = set()
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            names.update(re.findall(r"([A-Z][A-Z0-9_]*)=", line))
    return names


def systemd_env(path: Path) -> set[str]:
    return set(re.findall(r"^Environment=([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.MULTILINE))


def test_the_scan_finds_what_settings_read() -> None:
    read = names_read_by_code()
    # A few that must be there, or the scan itself is broken.
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "LOG_FORMAT", "PROPLABEL_ENGINE"} <= read
    assert {"PROPLABEL_JOB_STALE_SECONDS", "CELERY_VISIBILITY_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR"} <= read


def test_every_variable_the_manifests_set_is_read_by_the_code() -> None:
    read = names_read_by_code() | set(EXTERNAL_ENV)
    sources: dict[str, set[str]] = {
        **k8s_env_sets(),
        **{f"compose/{k}": v for k, v in compose_env_sets().items()},
    }
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        sources[dockerfile.name] = dockerfile_env(dockerfile)
    for unit in (DEPLOY / "systemd").glob("*.service"):
        sources[unit.name] = systemd_env(unit)
    sources["postgres (compose)"] = set(compose()["services"]["postgres"]["environment"])
    unknown = {where: sorted(names - read) for where, names in sources.items() if names - read}
    assert not unknown, f"set but never read (typo, or a setting that was removed?): {unknown}"


def test_required_variables_reach_every_application_container() -> None:
    missing = {
        where: sorted(REQUIRED_ENV - names)
        for where, names in {**k8s_env_sets(), **compose_env_sets()}.items()
        if REQUIRED_ENV - names
    }
    assert not missing, f"required settings missing: {missing}"
    (config,) = of_kind("ConfigMap")
    assert config["data"]["DJANGO_DEBUG"] == "false"
    assert env_file(DEPLOY / ".env.example")["DJANGO_DEBUG"] == "false"


def test_settings_load_in_distributed_mode_from_the_manifest_values(tmp_path: Path) -> None:
    """The ConfigMap + example Secret, handed to a fresh interpreter, give PostgreSQL, Redis and no DEBUG."""
    (config,) = of_kind("ConfigMap")
    (secret,) = of_kind("Secret")
    env = {**config["data"], **secret["stringData"], "DJANGO_MEDIA_ROOT": str(tmp_path / "media"),
           "PROPLABEL_VAR_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}  # fmt: skip
    probe = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.DEBUG, s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, "
        "s.CHANNEL_LAYERS['default']['BACKEND'], s.LOGGING['handlers']['console']['formatter']]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env={**env, "DJANGO_SETTINGS_MODULE": "backend.settings"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    debug, engine, broker, layer, log_format = yaml.safe_load(result.stdout.strip().splitlines()[-1])
    assert debug is False
    assert engine == "django.db.backends.postgresql"
    assert broker.startswith("redis://")
    assert layer == "channels_redis.core.RedisChannelLayer"
    assert log_format == "json"


# --- images, nginx, systemd ------------------------------------------------------------------------------------


def test_dockerfiles_copy_existing_paths_and_pin_the_one_torch() -> None:
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                sources = line.split()[1:-1]
                for source in sources:
                    assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        torch_pins = set(re.findall(r"torch==([0-9.]+)", text))
        assert torch_pins <= {"2.13.0"}, f"{dockerfile.name}: {torch_pins}"
        assert "USER proplabel" in text, f"{dockerfile.name} runs as root"
    assert "torch==2.13.0" in (REPO / "requirements.txt").read_text()
    services = compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert (
                REPO / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]
            ).is_file(), name


def test_compose_references_resolve() -> None:
    spec = compose()
    services = spec["services"]
    assert {"nginx", "web", "worker-gpu", "worker-io", "postgres", "redis", "migrate"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in spec["volumes"], f"{name}: undeclared volume {source}"
            else:
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    # Nothing that queries the database starts before the schema is migrated.
    for name in ("web", "worker-gpu", "worker-gpu-cpu", "worker-io"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Redis keeps queued jobs across restarts only with its append-only file.
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"


def _nginx_block(text: str, opener: str) -> str:
    start = text.index(opener)
    depth, index = 0, text.index("{", start)
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            break
    return text[start : index + 1]


def test_nginx_proxies_websockets_and_allows_the_configured_upload_size() -> None:
    text = re.sub(r"#.*", "", (DEPLOY / "nginx.conf").read_text())
    assert text.count("{") == text.count("}")
    websocket = _nginx_block(text, "location /ws/")
    assert "proxy_pass http://proplabel_web" in websocket
    # The Upgrade/Connection headers are set at server level and inherited by the /ws/ location.
    server = _nginx_block(text, "server {")
    assert "proxy_http_version 1.1;" in server
    assert "proxy_set_header Upgrade $http_upgrade;" in server
    assert "proxy_set_header Connection $connection_upgrade;" in server
    assert re.search(r"proxy_read_timeout\s+3600s", websocket)
    size = re.search(r"client_max_body_size\s+(\d+)([kmg]?);", server)
    assert size is not None
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[size.group(2)]
    limit = int(env_file(DEPLOY / ".env.example")["PROPLABEL_MAX_UPLOAD_BYTES"])
    assert int(size.group(1)) * factor >= limit, "nginx would cut uploads the application accepts"
    upstream = _nginx_block(text, "upstream proplabel_web")
    assert "server web:8000;" in upstream
    assert "8000" in compose()["services"]["web"]["expose"]
    assert re.search(r"location = /metrics \{\s*return 404;", text), "/metrics must not be public"


def test_systemd_units_run_the_same_commands() -> None:
    units = {path.name: path.read_text() for path in (DEPLOY / "systemd").glob("*.service")}
    assert set(units) == {
        "proplabel-web.service",
        "proplabel-worker-gpu@.service",
        "proplabel-worker-io.service",
    }
    for name, text in units.items():
        for section in ("[Unit]", "[Service]", "[Install]"):
            assert section in text, f"{name}: {section}"
        assert re.search(r"^ExecStart=/opt/proplabel/\.venv/bin/", text, flags=re.MULTILINE), name
    assert "backend.asgi:application" in units["proplabel-web.service"]
    gpu = units["proplabel-worker-gpu@.service"]
    assert "--queues gpu" in gpu and "CUDA_VISIBLE_DEVICES=%i" in gpu
    # %%h reaches Celery as %h (its own host-name placeholder); a bare %h would be systemd's.
    assert "@%%h" in gpu and "@%%h" in units["proplabel-worker-io.service"]


def test_operations_guide_covers_backup_restore_scaling_and_upgrades() -> None:
    guide = (DEPLOY / "OPERATIONS.md").read_text().lower()
    for topic in ("pg_dump", "pg_restore", "media", "scale", "migrate", "rollback", "readyz", "metrics"):
        assert topic in guide, topic
