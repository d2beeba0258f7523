"""The container, compose, Kubernetes, Prometheus and Grafana files in deploy/: each passes its
own format's checker (hadolint, the Compose spec's schema, Kubernetes' API schemas), and the
daemon and alert configs they carry are valid for our own loaders. Docker itself cannot run here,
so no image is built: that is said in the docs (README, docs/operating.md), not pretended."""
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.alerting.rules import load_rules
from pipeline.config import load_config
from pipeline.metrics import PREFIX, Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALLED_ENGINES = "/opt/rtsp-pipeline/engines"


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{name} is required: it comes with the dev extra (pip install -e '.[dev]')")
    return str(path)


def test_hadolint_passes_the_dockerfile():
    result = subprocess.run([tool("hadolint"), "--no-color", str(DEPLOY / "docker" / "Dockerfile")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_images_run_unprivileged_with_volumes_and_a_health_check():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    finals = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0] and s.split()[2] in ("cpu", "gpu")}
    assert set(finals) == {"cpu", "gpu"}
    for stage in finals.values():
        assert re.search(r"^USER 10001:10001$", stage, re.M)
        assert "/var/cache/rtsp-pipeline" in stage and "VOLUME" in stage
        assert "HEALTHCHECK" in stage and 'CMD ["rtsp-pipeline", "healthcheck"]' in stage  # the config's port
    assert "nvcr.io/nvidia/tensorrt" in text


def load_compose(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass
    Loader.add_constructor("!reset", lambda loader, node: None)  # Compose's "remove this key"
    return yaml.load(path.read_text(), Loader=Loader)


def compose_schema() -> dict:
    import check_jsonschema

    schema = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(schema.read_text())


def test_compose_files_follow_the_compose_spec_and_mount_files_that_exist():
    schema = compose_schema()
    base = load_compose(DEPLOY / "compose" / "compose.yaml")
    jsonschema.validate(base, schema)
    jsonschema.validate(load_compose(DEPLOY / "compose" / "compose.cpu.yaml"), schema)
    assert base["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert set(base["services"]) >= {"kafka", "pipeline", "alerts", "prometheus", "grafana"}
    for service in base["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                real = DEPLOY / "compose" / source
                if real.name in ("cameras.yaml", "alerts.yaml"):  # the operator copies them from the examples
                    real = real.with_name(real.stem + ".example.yaml")
                assert real.exists(), f"compose mounts {source}, which does not exist"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["pipeline:9108"]


def test_the_gpu_services_get_cuda_and_nvdec_from_the_container_toolkit():
    """Docker turns a device request's capabilities (all but `gpu`) into NVIDIA_DRIVER_CAPABILITIES,
    overriding the image's: without `compute` no libcuda is mounted, without `video` no NVDEC."""
    base = load_compose(DEPLOY / "compose" / "compose.yaml")
    requests = [(name, device) for name, service in base["services"].items()
                for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])]
    assert requests, "no service asks for a GPU"
    for name, device in requests:
        assert device["driver"] == "nvidia"
        assert {"gpu", "compute", "video", "utility"} <= set(device["capabilities"]), name


def with_local_engines(text: str) -> str:
    return text.replace(INSTALLED_ENGINES, str(REPO / "engines"))


def check_daemon_config(text: str, tmp_path: Path, **env: str):
    path = tmp_path / "cameras.yaml"
    path.write_text(with_local_engines(text))
    config = load_config(path, env if "CAMERA_PASSWORD_FILE" in env else {"CAMERA_PASSWORD": "x", **env})
    assert config.metrics.listen == "0.0.0.0:9108"  # reachable by Prometheus and the health check
    return config


def check_rules(text: str, tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    load_rules(path)


def test_the_configs_shipped_for_compose_are_valid(tmp_path):
    check_daemon_config((DEPLOY / "compose" / "cameras.example.yaml").read_text(), tmp_path)
    check_rules((DEPLOY / "compose" / "alerts.example.yaml").read_text(), tmp_path)


def kubernetes_documents() -> list[dict]:
    docs = []
    for name in yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    return docs + list(yaml.safe_load_all((DEPLOY / "kubernetes" / "secret.example.yaml").read_text()))


def test_kubernetes_manifests_pass_the_api_schemas_strictly():
    version = kubernetes_validate.latest_version()
    for doc in kubernetes_documents():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = json.loads(json.dumps(next(d for d in kubernetes_documents() if d["kind"] == "StatefulSet")))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):  # the checker does check
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_statefulset_places_cameras_by_group_keeps_its_volumes_and_has_headroom_for_a_pod_down(tmp_path):
    docs = kubernetes_documents()
    workload = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["run", "--config", "/etc/rtsp-pipeline/cameras.yaml"]  # no ordinals, no shard
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert workload["spec"]["minReadySeconds"] >= 10  # ready = placed and applied, then held a while
    assert pod["automountServiceAccountToken"] is False  # the daemon never calls the Kubernetes API
    # the spool and the engine cache survive a reschedule: volume claims, kept on scale-in
    claims = {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {"spool", "engine-cache"} <= claims and not {"spool", "engine-cache"} & {v["name"] for v in pod["volumes"]}
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    cameras = yaml.safe_load(config["data"]["cameras.yaml"])
    assert mounts["spool"] == "/var/lib/rtsp-pipeline" and mounts["engine-cache"] == "/var/cache/rtsp-pipeline"
    # API tokens from the mounted Secret, not the environment
    assert cameras["api"]["tokens_file"].startswith(mounts["secrets"]) and cameras["api"]["tokens_env"] is None
    assert not container.get("envFrom") and not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    password = tmp_path / "CAMERA_PASSWORD"
    password.write_text("from-the-secret-file\n")
    loaded = check_daemon_config(config["data"]["cameras.yaml"], tmp_path, POD_NAME="rtsp-pipeline-2",
                                 CAMERA_PASSWORD_FILE=str(password))
    assert ":from-the-secret-file@" in loaded.cameras[0].url
    assert env["CAMERA_PASSWORD_FILE"]["value"].startswith(mounts["secrets"])
    assert cameras["placement"]["mode"] == "kafka-group" and cameras["placement"]["node_id"] == "${POD_NAME}"
    check_rules(config["data"]["alerts.yaml"], tmp_path)
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": workload["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "rtsp_pipeline_placement_fullness"
    # headroom: at the target fullness f and any N >= minReplicas pods, N-1 pods hold the load (f*N <= N-1)
    target = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"].rstrip("m")) / 1000
    low = hpa["spec"]["minReplicas"]
    assert low == workload["spec"]["replicas"] and all(target * n <= n - 1 for n in range(low, 50))
    text = (DEPLOY / "kubernetes" / "autoscaling.yaml").read_text()
    rule = text[text.index("metricsQuery"):text.index("apiVersion")]
    for metric in re.findall(r"\b(rtsp_pipeline_placement_[a-z_]+)\{", rule):  # what the adapter's rule reads
        assert metric in exported_metrics(), metric
    assert all(m == "{<<.LabelMatchers>>}" for m in re.findall(r"rtsp_pipeline_placement_[a-z_]+(\{[^}]*\})", rule))
    assert "count by (namespace)" in rule  # the group's unplaced demand shared over its pods


def test_the_alerting_consumer_has_probes_and_every_pod_a_network_policy():
    docs = kubernetes_documents()
    alerts = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rtsp-alerts")
    container = alerts["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics" == container["readinessProbe"]["httpGet"]["port"]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["alerts.yaml"])
    assert config["metrics"]["listen"].endswith(":9109") and container["ports"][0]["containerPort"] == 9109
    policies = {d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: d for d in docs
                if d["kind"] == "NetworkPolicy"}
    workloads = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs
                 if d["kind"] in ("StatefulSet", "Deployment")}
    assert set(policies) == workloads
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert {53, 9092} <= egress_ports  # DNS and Kafka, and nothing open-ended
        assert all(rule.get("to") for rule in policy["spec"]["egress"])  # no rule open to everyone
        assert all(rule.get("from") for rule in policy["spec"]["ingress"])
    assert 554 in {p["port"] for rule in policies["rtsp-pipeline"]["spec"]["egress"] for p in rule["ports"]}


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rtsp-pipeline.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    return {m for e in exprs for m in re.findall(rf"\b{PREFIX}[a-z0-9_]+", e)}


def exported_metrics() -> set[str]:
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples} | {family.name}
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        if family.type == "counter":
            names.add(family.name + "_total")
    names |= {PREFIX + n for n in ("gpu_utilization_ratio", "gpu_memory_used_bytes", "gpu_memory_total_bytes")}
    return names


def test_the_dashboard_is_current_and_queries_only_metrics_the_daemon_exports():
    result = subprocess.run([sys.executable, "-m", "scripts.gen.grafana_dashboard", "--check"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    missing = dashboard_metrics() - exported_metrics()
    assert not missing, f"dashboard panels query metrics nobody exports: {sorted(missing)}"
    assert len(dashboard_metrics()) >= 15


def test_the_alerting_rules_query_only_metrics_the_daemon_exports_and_prometheus_loads_them():
    """deploy/prometheus/rules.yml (what the rules do is run by promtool in test_compose)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(rf"\b{PREFIX}[a-z0-9_]+", e)}
    assert not used - exported_metrics(), f"rules query metrics nobody exports: {sorted(used - exported_metrics())}"
    assert {f"{PREFIX}gpu_memory_bytes", f"{PREFIX}gpu_memory_used_bytes"} <= used
    assert yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"] == ["rules.yml"]
    compose = load_compose(DEPLOY / "compose" / "compose.yaml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    assert mounts["../prometheus/rules.yml"] == "/etc/prometheus/rules.yml"


def test_grafana_provisioning_points_at_the_dashboard_folder_and_prometheus():
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "rtsp-pipeline.yaml").read_text())
    compose = load_compose(DEPLOY / "compose" / "compose.yaml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_images_health_check_asks_healthz_on_the_port_the_config_names(tmp_path):
    """`rtsp-pipeline healthcheck` (the images' HEALTHCHECK) reads metrics.listen from the config:
    it was fixed at 9108, so a daemon listening elsewhere was unhealthy forever."""
    import http.server
    import threading

    from scripts.lab.common import free_port

    answers = {"status": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answers["status"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "cameras.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text().replace(
        '127.0.0.1:${DEMO_METRICS_PORT:-9108}', f"0.0.0.0:{port}"))

    def check(**env):
        return subprocess.run([sys.executable, "-m", "pipeline", "healthcheck"], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin", "DEMO_RTSP": "127.0.0.1:8554",
                                                         "RTSP_PIPELINE_CONFIG": str(config), **env})
    try:
        healthy = check()
        assert healthy.returncode == 0 and f"127.0.0.1:{port}/healthz: healthy" in healthy.stdout, healthy.stderr
        answers["status"] = 503
        assert check().returncode == 1
    finally:
        server.shutdown()
        server.server_close()
    gone = check()
    assert gone.returncode == 1 and f"127.0.0.1:{port}/healthz" in gone.stderr
