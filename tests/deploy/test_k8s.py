"""Policy tests over the rendered Kubernetes manifests (k8s/overlays/*) and the Yatai manifest.

Each overlay is rendered with ``kubectl kustomize`` (offline) and checked: schema-valid for the targeted
Kubernetes version, hardened containers, probes on real routes, selectors that select real pods, network
isolation, no secrets in ConfigMaps, pinned production images.
"""

from __future__ import annotations

import base64
import re
import shutil

import pytest
import yaml

from tests.deploy._helpers import ROOT, load_script

K8S = ROOT / "k8s"
kv = load_script(K8S / "validate.py", "timbral_k8s_validate")

NAMESPACES = {"dev": "timbral-dev", "prod": "timbral"}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: it renders the overlays "
                                   "(`kubectl kustomize`); install kubectl to run these policy tests")

# The service's real HTTP routes (BentoML built-ins and ours) and the Swagger UI.
BUILTIN_ROUTES = {"/livez", "/readyz", "/healthz", "/metrics"}
OUR_ROUTES = {"/ping", "/health", "/model", "/recommend", "/recommend/batch", "/recommend/history",
              "/similar-items", "/score"}
SWAGGER = {"/", "/docs.json", "/static_content"}
API_PORT = 3000
API_LABELS = {"app.kubernetes.io/name": "timbral", "app.kubernetes.io/component": "api"}
SETTINGS = ["ENABLE_CACHING", "CACHE_TTL", "REDIS_TIMEOUT_MS", "MAX_BATCH_SIZE", "MAX_LATENCY_MS", "MAX_K",
            "MAX_BATCH_USERS", "LOG_LEVEL", "MODEL_TAG", "MAX_REQUEST_SIZE", "RATE_LIMIT", "RATE_LIMIT_ENABLED",
            "BLAS_THREADS", "API_WORKERS", "MODEL_CALLS_IN_FLIGHT", "MODEL_CALL_HOLD",
            "TRACING_ENABLED"]
SECRET_KEY = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|_KEY$|AUTH$|^REDIS_URL$|STORE_URI$|DSN$)", re.I
)
URL_WITH_CREDENTIALS = re.compile(r"://[^/\s:@]*:[^/\s@]+@")
# Secrets production expects to exist in the cluster (created out-of-band, see k8s/README.md)
EXTERNAL_SECRETS = {"timbral-api-secrets", "mlflow-secrets", "mlflow-basic-auth", "timbral-api-tls", "mlflow-tls"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module", params=sorted(NAMESPACES))
def overlay(request) -> str:
    return request.param


_cache: dict[str, list[dict]] = {}


def rendered(name: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    if name not in _cache:
        _cache[name] = kv.render(K8S / "overlays" / name)
    return _cache[name]


@pytest.fixture
def docs(overlay) -> list[dict]:
    return rendered(overlay)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_template(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def containers(workload: dict) -> list[dict]:
    spec = pod_template(workload)["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def pod_labels(docs: list[dict]) -> list[dict[str, str]]:
    return [pod_template(w)["metadata"].get("labels", {}) for w in workloads(docs)]


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """matchLabels / matchExpressions (In, NotIn, Exists, DoesNotExist) semantics; {} selects everything."""
    selector = selector or {}
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def api_workload(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "timbral-api")


def api_container(docs: list[dict]) -> dict:
    (container,) = [c for c in containers(api_workload(docs)) if c["name"] == "api"]
    return container


def effective(container: dict, pod_spec: dict, key: str):
    """A securityContext field, from the container or else from the pod."""
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else (pod_spec.get("securityContext") or {}).get(key)


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


# ---------------------------------------------------------------- rendering and schemas

@needs_kubectl
def test_overlay_renders_into_its_namespace(overlay, docs):
    assert docs, f"overlay {overlay} rendered nothing"
    namespace = NAMESPACES[overlay]
    (ns,) = of_kind(docs, "Namespace")
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"


@needs_kubectl
def test_every_document_validates_against_kubernetes_schemas(overlay, docs):
    results = kv.validate_documents(docs, f"overlays/{overlay}", kv.KUBERNETES_VERSION)
    errors = [r.line() for r in results if r.status == "error"]
    assert not errors, "\n".join(errors)
    # the overlays contain no custom resources: everything was really validated
    assert all(r.status == "ok" for r in results), [r.line() for r in results if r.status != "ok"]


def test_strict_schema_validation_rejects_unknown_fields():
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    bad = {**good, "dta": {"a": "b"}}
    assert kv.validate_documents([good], "t")[0].status == "ok"
    assert kv.validate_documents([bad], "t")[0].status == "error"
    crd = {"apiVersion": "serving.yatai.ai/v2alpha1", "kind": "BentoDeployment", "metadata": {"name": "x"}}
    assert kv.validate_documents([crd], "t")[0].status == "skipped"


def test_validate_script_reports_custom_resources_as_skipped(capsys):
    assert kv.main(["-q", str(kv.YATAI_MANIFEST)]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED" in out and "BentoDeployment" in out and "0 invalid" in out


# ---------------------------------------------------------------- containers

@needs_kubectl
def test_every_container_is_hardened_and_sized(docs):
    assert workloads(docs)
    for workload in workloads(docs):
        pod_spec = pod_template(workload)["spec"]
        assert pod_spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for c in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{c['name']}"
            resources = c.get("resources", {})
            for section in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    assert res in resources.get(section, {}), f"{where}: no {section}.{res}"
            assert "livenessProbe" in c, f"{where}: no liveness probe"
            assert "readinessProbe" in c, f"{where}: no readiness probe"
            assert effective(c, pod_spec, "runAsNonRoot") is True, f"{where}: runAsNonRoot"
            assert (effective(c, pod_spec, "runAsUser") or 0) > 0, f"{where}: runs as root"
            sc = c.get("securityContext") or {}
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("privileged") in (None, False), f"{where}: privileged"
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), f"{where}: capabilities drop ALL"
            assert not (sc.get("capabilities") or {}).get("add"), f"{where}: adds capabilities"
            seccomp = effective(c, pod_spec, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"


@needs_kubectl
def test_api_container_matches_the_service_facts(docs):
    deployment = api_workload(docs)
    template = pod_template(deployment)
    pod_spec = template["spec"]
    c = api_container(docs)
    assert effective(c, pod_spec, "runAsUser") == 1034
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert [p["containerPort"] for p in c["ports"]] == [API_PORT]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(API_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    # HPA owns the replica count
    assert "replicas" not in deployment["spec"]


@needs_kubectl
def test_api_probes_use_real_routes(docs):
    c = api_container(docs)
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c[probe_name]
        http = probe["httpGet"]
        assert http["path"] in BUILTIN_ROUTES | OUR_ROUTES, f"{probe_name}: {http['path']} is no route"
        assert port_names.get(http["port"], http["port"]) == API_PORT
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"  # 503 until the model is loaded
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 180, "too little time to load the model"


@needs_kubectl
def test_api_is_writable_only_where_bentoml_writes_and_keeps_the_bento_visible(docs):
    pod_spec = pod_template(api_workload(docs))["spec"]
    c = api_container(docs)
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # the bento (and the model inside it) lives in /home/bentoml/bento: no volume may hide it
    for path in mounts:
        assert not "/home/bentoml/bento".startswith(path.rstrip("/") + "/") and path != "/home/bentoml/bento", path
        assert not path.startswith("/home/bentoml/bento/"), path
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    home = env["BENTOML_HOME"]
    assert any(home == p or home.startswith(p.rstrip("/") + "/") for p in mounts), \
        f"BENTOML_HOME={home} is not on a writable volume"


@needs_kubectl
def test_api_shuts_down_gracefully_and_spreads(docs):
    pod_spec = pod_template(api_workload(docs))["spec"]
    c = api_container(docs)
    pre_stop = c["lifecycle"]["preStop"]
    sleep = pre_stop.get("sleep", {}).get("seconds") or 0
    assert sleep > 0 or "exec" in pre_stop
    assert pod_spec["terminationGracePeriodSeconds"] > sleep + 10
    keys = {t["topologyKey"] for t in pod_spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in pod_spec["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], pod_template(api_workload(docs))["metadata"]["labels"])


@needs_kubectl
def test_api_settings_come_from_a_configmap_and_redis_url_from_a_secret(overlay, docs):
    c = api_container(docs)
    refs = c["envFrom"]
    (cm_name,) = [r["configMapRef"]["name"] for r in refs if "configMapRef" in r]
    (secret_name,) = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
    configmap = one(docs, "ConfigMap", cm_name)
    assert set(SETTINGS) <= set(configmap["data"]), set(SETTINGS) - set(configmap["data"])
    assert "REDIS_URL" not in configmap["data"]
    assert configmap["data"]["MAX_REQUEST_SIZE"] == "1048576"
    assert all(e["name"] != "REDIS_URL" or "valueFrom" in e for e in c.get("env", []))
    if overlay == "dev":
        secret = one(docs, "Secret", secret_name)
        assert secret_values(secret)["REDIS_URL"].startswith("redis://")
    else:
        assert secret_name.startswith("timbral-api-secrets") and secret_name in EXTERNAL_SECRETS


# ---------------------------------------------------------------- secrets

@needs_kubectl
def test_no_secret_looking_key_or_value_in_any_configmap(docs):
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not SECRET_KEY.search(key), f"ConfigMap {cm['metadata']['name']}: {key} belongs in a Secret"
            assert not URL_WITH_CREDENTIALS.search(value), f"ConfigMap {cm['metadata']['name']}: {key} has credentials"


@needs_kubectl
def test_no_literal_secrets_in_container_env(docs):
    for workload in workloads(docs):
        for c in containers(workload):
            for e in c.get("env", []):
                if SECRET_KEY.search(e["name"]):
                    assert "valueFrom" in e, f"{workload['metadata']['name']}/{c['name']}: {e['name']} is a literal"


@needs_kubectl
def test_referenced_secrets_exist_or_are_documented_external(overlay, docs):
    generated = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    referenced = set()
    for workload in workloads(docs):
        for c in containers(workload):
            referenced |= {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
            referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                           if "secretKeyRef" in e.get("valueFrom", {})}
    for ingress in of_kind(docs, "Ingress"):
        referenced |= {t["secretName"] for t in ingress["spec"].get("tls", [])}
        if "nginx.ingress.kubernetes.io/auth-secret" in ingress["metadata"].get("annotations", {}):
            referenced.add(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-secret"])
    if overlay == "prod":
        assert not generated, "no Secret may be committed for production"
        assert referenced <= EXTERNAL_SECRETS, referenced - EXTERNAL_SECRETS
        readme = (K8S / "README.md").read_text()
        for name in EXTERNAL_SECRETS:
            assert name in readme, f"k8s/README.md does not document the external Secret {name}"
    else:
        missing = {name for name in referenced if name not in generated and not name.endswith("-tls")}
        assert not missing, missing


@needs_kubectl
def test_dev_secret_values_are_obviously_fake():
    docs = rendered("dev")
    secrets = of_kind(docs, "Secret")
    assert secrets
    for secret in secrets:
        for key, value in secret_values(secret).items():
            assert "fake" in value or "dev-only" in value or "devonly" in value, \
                f"Secret {secret['metadata']['name']}/{key} does not look like a placeholder"


def test_prod_secret_example_is_a_placeholder_and_real_files_are_ignored():
    prod = K8S / "overlays" / "prod"
    example = (prod / "secrets.env.example").read_text()
    assert "rediss://" in example
    for line in example.splitlines():
        if line and not line.startswith("#"):
            assert "CHANGE_ME" in line, line
    assert "secrets.env" in (prod / ".gitignore").read_text().split()
    assert "secrets.env" not in (prod / "kustomization.yaml").read_text().replace("secrets.env.example", "")


# ---------------------------------------------------------------- images

@needs_kubectl
def test_images_are_tagged_and_production_pins_them(overlay, docs):
    for workload in workloads(docs):
        for c in containers(workload):
            image = c["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert name and tag and "/" not in tag, f"{image}: no tag"
            assert tag != "latest", f"{image}: latest"
            if overlay == "prod":
                assert "@sha256:" in image or re.fullmatch(r"v?\d+\.\d+\.\d+([.-][\w.]+)?", tag), \
                    f"{image}: production images pin a release version or digest"


@needs_kubectl
def test_prod_images_are_set_with_kustomize_images():
    kustomization = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    names = {i["name"]: i for i in kustomization["images"]}
    assert {"timbral", "timbral-mlflow"} <= set(names)
    assert names["timbral"].get("newTag") or names["timbral"].get("digest")
    docs = rendered("prod")
    assert api_container(docs)["image"].split("@")[0].split(":")[0].endswith("timbral")


# ---------------------------------------------------------------- selectors

@needs_kubectl
def test_services_select_real_pods_and_ports(docs):
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        matching = [w for w in workloads(docs) if selects({"matchLabels": selector}, pod_template(w)["metadata"]["labels"])]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        ports = {p.get("name"): p["containerPort"] for w in matching for c in containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"Service {service['metadata']['name']}: {target}"


@needs_kubectl
def test_hpa_targets_the_api_deployment(overlay, docs):
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    one(docs, ref["kind"], ref["name"])
    assert (ref["kind"], ref["name"]) == ("Deployment", "timbral-api")
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics["cpu"] == {"type": "Utilization", "averageUtilization": 70}
    assert metrics["memory"] == {"type": "Utilization", "averageUtilization": 80}
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    if overlay == "prod":
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)


@needs_kubectl
def test_pdb_selects_the_api_pods(docs):
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    matching = [labels for labels in pod_labels(docs) if selects(pdb["spec"]["selector"], labels)]
    assert matching and all(selects({"matchLabels": API_LABELS}, labels) for labels in matching)


@needs_kubectl
def test_network_policies_select_real_pods(docs):
    policies = of_kind(docs, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
               and not p["spec"].get("ingress") for p in policies), "no default-deny ingress policy"
    for policy in policies:
        name = policy["metadata"]["name"]
        assert any(selects(policy["spec"]["podSelector"], labels) for labels in pod_labels(docs)), \
            f"NetworkPolicy {name} selects no pod"
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], labels) for labels in pod_labels(docs)), \
                        f"NetworkPolicy {name}: peer selects no pod"


def _allowed_peers(docs: list[dict], labels: dict[str, str]) -> list[dict]:
    peers = []
    for policy in of_kind(docs, "NetworkPolicy"):
        if selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits everyone"
                peers += rule["from"]
    return peers


@needs_kubectl
def test_network_isolation(overlay, docs):
    def namespaces(peers):
        return {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
                if "namespaceSelector" in p}

    api_peers = _allowed_peers(docs, {**API_LABELS})
    assert all(set(p) == {"namespaceSelector"} for p in api_peers), api_peers
    assert "ingress-nginx" in namespaces(api_peers)
    assert namespaces(api_peers) <= {"ingress-nginx", "monitoring"}  # monitoring: Prometheus scrapes /metrics

    mlflow_peers = _allowed_peers(docs, {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/component": "tracking"})
    assert namespaces(mlflow_peers) == {"ingress-nginx"} and all(set(p) == {"namespaceSelector"} for p in mlflow_peers)

    redis = [w for w in workloads(docs) if w["metadata"]["name"] == "redis"]
    if overlay == "dev":
        redis_labels = pod_template(redis[0])["metadata"]["labels"]
        redis_peers = _allowed_peers(docs, redis_labels)
        assert redis_peers and all(set(p) == {"podSelector"} and p["podSelector"] == {"matchLabels": API_LABELS}
                                   for p in redis_peers)
    else:
        assert not redis


# ---------------------------------------------------------------- ingress

@needs_kubectl
def test_ingresses_have_tls_and_real_backends(docs):
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    ingresses = {i["metadata"]["name"]: i for i in of_kind(docs, "Ingress")}
    assert set(ingresses) == {"timbral-api", "mlflow"}
    for name, ingress in ingresses.items():
        spec = ingress["spec"]
        assert spec["ingressClassName"] == "nginx"
        tls_hosts = {h for t in spec["tls"] for h in t["hosts"]}
        for rule in spec["rules"]:
            assert rule["host"] in tls_hosts, f"Ingress {name}: {rule['host']} without TLS"
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services[backend["name"]]
                assert backend["port"].get("name") in {p["name"] for p in service["spec"]["ports"]} or \
                    backend["port"].get("number") in {p["port"] for p in service["spec"]["ports"]}
        annotations = ingress["metadata"]["annotations"]
        assert annotations.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true"


@needs_kubectl
def test_api_ingress_rate_limits_and_exposes_only_public_routes(docs):
    ingress = one(docs, "Ingress", "timbral-api")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/limit-connections"]) > 0
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    paths = {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths <= OUR_ROUTES | SWAGGER, paths - (OUR_ROUTES | SWAGGER)
    assert not paths & BUILTIN_ROUTES, "probes and /metrics stay cluster-internal"
    covered = {route for route in OUR_ROUTES if any(route == p or route.startswith(p.rstrip("/") + "/")
                                                     for p in paths if p != "/")}
    assert covered == OUR_ROUTES, OUR_ROUTES - covered


# ---------------------------------------------------------------- MLflow and Redis

@needs_kubectl
def test_mlflow_server_config(overlay, docs):
    namespace = NAMESPACES[overlay]
    deployment = one(docs, "Deployment", "mlflow")
    (c,) = containers(deployment)
    assert c["image"].split(":")[0] == "timbral-mlflow"
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe_name]["httpGet"]["path"] == "/health"
    (cm_name,) = [r["configMapRef"]["name"] for r in c["envFrom"] if "configMapRef" in r]
    (secret_name,) = [r["secretRef"]["name"] for r in c["envFrom"] if "secretRef" in r]
    config = one(docs, "ConfigMap", cm_name)["data"]
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert config["MLFLOW_HOST"] == "0.0.0.0"
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "mlflow"]
    port = service["spec"]["ports"][0]["port"]
    allowed = config["MLFLOW_ALLOWED_HOSTS"].split(",")
    fqdn = f"mlflow.{namespace}.svc.cluster.local"
    for host in ("mlflow", f"mlflow:{port}", fqdn, f"{fqdn}:{port}"):
        assert host in allowed, f"MLFLOW_ALLOWED_HOSTS lacks {host}"
    for rule in one(docs, "Ingress", "mlflow")["spec"]["rules"]:
        assert rule["host"] in allowed, f"MLFLOW_ALLOWED_HOSTS lacks the ingress host {rule['host']}"
    if overlay == "dev":
        secret = secret_values(one(docs, "Secret", secret_name))
        assert secret["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)
        assert config["MLFLOW_S3_ENDPOINT_URL"].startswith("http")


@needs_kubectl
def test_redis_statefulset_only_in_dev():
    dev, prod = rendered("dev"), rendered("prod")
    assert not of_kind(prod, "StatefulSet")
    redis = one(dev, "StatefulSet", "redis")
    (c,) = containers(redis)
    args = c["command"] + c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"mountPath": "/data", "name": claim["metadata"]["name"]} in c["volumeMounts"]
    # the API's REDIS_URL carries the same password and points at the Redis Service
    password = secret_values(one(dev, "Secret", env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]))
    api_secret = [r["secretRef"]["name"] for r in api_container(dev)["envFrom"] if "secretRef" in r][0]
    url = secret_values(one(dev, "Secret", api_secret))["REDIS_URL"]
    assert url == f"redis://:{password['REDIS_PASSWORD']}@redis:6379/0"


# ---------------------------------------------------------------- Yatai

YATAI_V2ALPHA1_SPEC = {"annotations", "labels", "bento", "resources", "autoscaling", "envs", "runners", "ingress",
                       "monitorExporter", "extraPodMetadata", "extraPodSpec"}


def test_yatai_bentodeployment_manifest():
    docs = [d for d in yaml.safe_load_all((K8S / "yatai" / "bentodeployment.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    deployment = kinds["BentoDeployment"]
    assert deployment["apiVersion"] == "serving.yatai.ai/v2alpha1"
    spec = deployment["spec"]
    assert set(spec) <= YATAI_V2ALPHA1_SPEC, set(spec) - YATAI_V2ALPHA1_SPEC
    request = kinds["BentoRequest"]
    assert request["apiVersion"] == "resources.yatai.ai/v1alpha1"
    assert spec["bento"] == request["metadata"]["name"]
    assert request["spec"]["bentoTag"].startswith("timbral:") and not request["spec"]["bentoTag"].endswith(":latest")
    assert spec["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    autoscaling = spec["autoscaling"]
    assert (autoscaling["minReplicas"], autoscaling["maxReplicas"]) == (3, 20)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in autoscaling["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    envs = {e["name"]: e for e in spec["envs"]}
    assert set(SETTINGS) <= set(envs)
    assert "secretKeyRef" in envs["REDIS_URL"]["valueFrom"] and "value" not in envs["REDIS_URL"]
    assert spec["ingress"]["enabled"] is True and spec["ingress"]["tls"]["secretName"]


def test_yatai_settings_match_the_configmap():
    config = dict(line.split("=", 1) for line in (K8S / "base" / "api" / "config.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    docs = [d for d in yaml.safe_load_all((K8S / "yatai" / "bentodeployment.yaml").read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "BentoDeployment"]
    envs = {e["name"]: e.get("value") for e in deployment["spec"]["envs"]}
    for key, value in config.items():
        assert envs[key] == value, key


def test_readmes_state_the_version_and_the_yatai_caveat():
    readme = (K8S / "README.md").read_text()
    major_minor = ".".join(kv.KUBERNETES_VERSION.split(".")[:2])
    assert major_minor in readme
    assert "kubectl kustomize" in readme and "make k8s-validate" in readme
    yatai = (K8S / "yatai" / "README.md").read_text()
    assert "1.2" in yatai and "primary" in yatai.lower()
