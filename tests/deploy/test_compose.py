"""The single-host stack in k8s/compose: compose.yaml policy checks, and the nginx template rendered and
checked (``nginx -t``) and really run on loopback in front of two stub API replicas, as an unprivileged user
where possible. The nginx tests skip when nginx is not installed (Debian package ``nginx``)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.deploy._helpers import ROOT, load_script

COMPOSE_DIR = ROOT / "k8s" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
TEMPLATE = COMPOSE_DIR / "nginx" / "timbral.conf.template"
render_conf = load_script(COMPOSE_DIR / "nginx" / "render_conf.py", "timbral_render_nginx_conf")

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx); "
                                 "the lead's `make system-deps` installs it for CI")

PROBE_ROUTES = {"/livez", "/readyz", "/healthz", "/health", "/ping"}
SETTINGS = ["REDIS_URL", "ENABLE_CACHING", "CACHE_TTL", "REDIS_TIMEOUT_MS", "MAX_BATCH_SIZE", "MAX_LATENCY_MS",
            "MAX_K", "MAX_BATCH_USERS", "LOG_LEVEL", "MODEL_TAG", "MAX_REQUEST_SIZE", "RATE_LIMIT",
            "RATE_LIMIT_ENABLED", "BLAS_THREADS", "API_WORKERS", "MODEL_CALLS_IN_FLIGHT", "MODEL_CALL_HOLD",
            "TRACING_ENABLED"]
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def routes_in(text: str) -> set[str]:
    return set(re.findall(r"https?://[^/\s'\"]+(/[\w./-]*)", text))


# ---------------------------------------------------------------- compose.yaml

def test_stack_has_the_expected_services(services):
    assert set(services) == {"api", "nginx", "redis", "postgres", "minio", "minio-init", "mlflow"}


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service["image"]
        # ${VAR:-default} or a literal: the effective default must carry a version tag, never latest
        resolved = VARIABLE.sub(lambda m: m.group(3) if m.group(2) == ":-" else f"<{m.group(1)}>", image)
        assert re.search(r":[\w<>][\w.<>-]*$", resolved), f"{name}: {image} has no pinned tag"
        assert not resolved.endswith(":latest"), f"{name}: {image}"
    assert "${TIMBRAL_TAG:?" in services["api"]["image"], "the bento tag must be given explicitly"


def test_api_replicas_and_settings(services):
    api = services["api"]
    assert "API_REPLICAS" in str(api["deploy"]["replicas"])
    assert "ports" not in api, "replicas are reached through nginx only"
    assert api["expose"] == ["3000"]
    env = api["environment"]
    assert set(SETTINGS) <= set(env), set(SETTINGS) - set(env)
    assert env["MAX_REQUEST_SIZE"] == "1048576"
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", env["REDIS_URL"])
    assert api["read_only"] is True and any(t.startswith("/tmp") for t in api["tmpfs"])
    assert env["BENTOML_HOME"].startswith("/tmp/")
    assert api["user"].split(":")[0] == "1034"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_healthchecks_use_real_probe_routes(services):
    for name in ("api", "nginx", "mlflow"):
        routes = routes_in(healthcheck_text(services[name]))
        assert routes, f"{name}: healthcheck calls no HTTP route"
        if name == "mlflow":
            assert routes == {"/health"}
        else:
            assert routes <= PROBE_ROUTES, f"{name}: {routes - PROBE_ROUTES}"
    assert routes_in(healthcheck_text(services["api"])) == {"/readyz"}  # 503 until the model is loaded
    assert ":3000/" in healthcheck_text(services["api"])
    assert "ping" in healthcheck_text(services["redis"])
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "ready local" in healthcheck_text(services["minio"])
    for name, service in services.items():
        if name != "minio-init":
            assert "healthcheck" in service, name


def test_redis_persists_with_aof_and_requires_a_password(services):
    redis = services["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command  # from the environment, not the file
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "redis-data:/data" in redis["volumes"]
    assert "ports" not in redis


def test_postgres_and_minio_keep_their_data(compose, services):
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "minio-data:/data" in services["minio"]["volumes"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert {"redis-data", "postgres-data", "minio-data"} <= set(compose["volumes"])


def test_mlflow_server_on_postgres_and_minio(services):
    mlflow = services["mlflow"]
    assert (COMPOSE_DIR / mlflow["build"]["context"] / "Dockerfile").is_file()
    assert mlflow["image"].startswith("timbral-mlflow:")
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:${POSTGRES_PASSWORD")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert {"mlflow", "mlflow:5000"} <= set(env["MLFLOW_ALLOWED_HOSTS"].split(","))
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"]), "MLflow is published on loopback only"


def test_nginx_fronts_the_replicas_with_the_template(services):
    nginx = services["nginx"]
    mounts = [v for v in nginx["volumes"] if v.startswith("./nginx/timbral.conf.template:")]
    assert mounts and mounts[0].endswith(":ro")
    target = mounts[0].split(":")[1]
    command = " ".join(nginx["command"])
    assert target in command
    assert "envsubst '$${TIMBRAL_LISTEN} $${TIMBRAL_UPSTREAMS}'" in command  # only our two placeholders
    assert "-p /tmp/nginx/" in command and "daemon off;" in command
    upstreams = nginx["environment"]["TIMBRAL_UPSTREAMS"]
    assert re.fullmatch(r"server api:3000 max_fails=\d+ fail_timeout=\d+s;", upstreams)
    listen = nginx["environment"]["TIMBRAL_LISTEN"]
    assert any(p.endswith(f":{listen}") for p in nginx["ports"])
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    assert nginx["read_only"] is True and nginx["user"] != "0"


def test_env_example_defines_every_required_variable():
    text = COMPOSE.read_text()
    required = {m.group(1) for m in VARIABLE.finditer(text) if m.group(2) in (":?", "?")}
    without_default = {m.group(1) for m in VARIABLE.finditer(text) if not m.group(2)}
    example = dict(line.split("=", 1) for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required | without_default <= set(example), (required | without_default) - set(example)
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert "CHANGE_ME" in example[key]
    assert example["TIMBRAL_TAG"] != "latest"


def test_readme_explains_the_stack():
    readme = (COMPOSE_DIR / "README.md").read_text()
    for needle in (".env.example", "docker compose up", "API_REPLICAS", "render_conf.py", "nginx -t", "least_conn"):
        assert needle in readme, needle


# ---------------------------------------------------------------- the nginx template

def test_template_directives():
    text = TEMPLATE.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(render_conf.PLACEHOLDERS)
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert "${" not in line, f"placeholder in a comment: {line}"
    for needle in ("least_conn;", "client_max_body_size 1m;", "proxy_connect_timeout", "proxy_read_timeout",
                   "proxy_send_timeout", "proxy_next_upstream error timeout", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme", "X-Real-IP $remote_addr", "pid nginx.pid;", "client_body_temp_path",
                   "proxy_temp_path"):
        assert needle in text, needle
    health = re.search(r"location = /health \{(.*?)\}", text, re.S)
    assert health and "access_log off;" in health.group(1)


def test_render_fills_both_placeholders():
    conf = render_conf.render("127.0.0.1:18080", ["127.0.0.1:3001", "127.0.0.1:3002"])
    assert "${" not in conf
    assert "listen 127.0.0.1:18080;" in conf
    servers = [line.strip() for line in conf.splitlines() if re.match(r"\s*server [^{]+;$", line)]
    assert len(servers) == 2 and all(s.endswith(" max_fails=3 fail_timeout=10s;") for s in servers)
    assert "server 127.0.0.1:3001 " in conf and "server 127.0.0.1:3002 " in conf
    with pytest.raises(ValueError):
        render_conf.render("127.0.0.1:18080", [])
    with pytest.raises(ValueError):
        render_conf.render("127.0.0.1:18080", ["127.0.0.1:3001; include /etc/passwd"])


def _envsubst(text: str, values: dict[str, str]) -> str:
    """What `envsubst '${A} ${B}'` does in the compose nginx container."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


@needs_nginx
def test_rendered_config_passes_nginx_t(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_conf.render("127.0.0.1:18080", ["127.0.0.1:3001", "127.0.0.1:3002"]))
    result = render_conf.nginx_check(conf, tmp_path, NGINX)
    assert result.returncode == 0, result.stderr
    # the compose rendering (upstream by service name) is valid too, once `api` resolves
    compose_env = yaml.safe_load(COMPOSE.read_text())["services"]["nginx"]["environment"]
    text = _envsubst(TEMPLATE.read_text(), {"TIMBRAL_LISTEN": compose_env["TIMBRAL_LISTEN"],
                                            "TIMBRAL_UPSTREAMS": compose_env["TIMBRAL_UPSTREAMS"].replace("api:", "localhost:")})
    conf.write_text(text)
    result = render_conf.nginx_check(conf, tmp_path, NGINX)
    assert result.returncode == 0, result.stderr


def _as_nobody() -> list[str] | None:
    """A prefix to run a command as `nobody` when we are root (to prove the config needs no privileges)."""
    if os.geteuid() != 0:
        return []  # already unprivileged
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


# ---------------------------------------------------------------- nginx really in front of two replicas

class _StubAPI(http.server.ThreadingHTTPServer):
    """A stand-in API replica on loopback: answers with its name and the request headers it got."""

    daemon_threads = True

    def __init__(self, name: str):
        self.name = name
        self.down = False
        self.seen: list[tuple[str, str, dict[str, str]]] = []

        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                if stub.down:  # a crashed replica: drop kept-alive connections without an answer
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.seen.append((self.command, self.path, dict(self.headers)))
                body = stub.name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.down = True
        self.shutdown()
        self.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace"), dict(response.getheaders())
    finally:
        conn.close()


@contextlib.contextmanager
def _nginx(upstreams: list[str]):
    user = _as_nobody()
    if user is None:
        pytest.skip("running as root without setpriv: cannot run nginx unprivileged")
    prefix = Path(tempfile.mkdtemp(prefix="timbral-nginx-"))
    os.chmod(prefix, 0o777)  # writable for `nobody` when we are root
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_conf.render(f"127.0.0.1:{port}", upstreams))
    conf.chmod(0o644)
    access_log = prefix / "stdout.log"
    access_log.touch(mode=0o666)
    access_log.chmod(0o666)  # nginx reopens /dev/stdout, i.e. this file, as `nobody`
    with access_log.open("wb") as out:
        proc = subprocess.Popen([*user, NGINX, "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start:\n{access_log.read_text()}")
            time.sleep(0.1)
        yield port, access_log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)  # graceful shutdown of master and workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        shutil.rmtree(prefix, ignore_errors=True)


@needs_nginx
def test_nginx_balances_limits_and_fails_over_between_two_replicas():
    first, second = _StubAPI("replica-1"), _StubAPI("replica-2")
    try:
        with _nginx([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]) as (port, log):
            answers = [_request(port, "POST", "/recommend", b'{"user_id": 1}') for _ in range(20)]
            assert all(status == 200 for status, _, _ in answers)
            assert {body for _, body, _ in answers} == {"replica-1", "replica-2"}  # both replicas get traffic
            assert all("X-Request-ID" in headers or "x-request-id" in headers for _, _, headers in answers)

            # forwarded headers reach the replica
            _, _, headers = first.seen[-1] if first.seen else second.seen[-1]
            lowered = {k.lower(): v for k, v in headers.items()}
            assert lowered["x-forwarded-for"] == "127.0.0.1"
            assert lowered["x-real-ip"] == "127.0.0.1"
            assert lowered["x-forwarded-proto"] == "http"

            # request size limit (1 MiB) is enforced at nginx
            status, _, _ = _request(port, "POST", "/recommend/batch", b"x" * (1024 * 1024 + 1))
            assert status == 413
            # /metrics is not exposed through the public entry
            assert _request(port, "GET", "/metrics")[0] == 404

            # /health is proxied but not access-logged; other requests are
            assert _request(port, "GET", "/health")[0] == 200
            assert _request(port, "GET", "/ping")[0] == 200
            time.sleep(0.3)
            logged = log.read_text()
            assert '"GET /ping' in logged and '"POST /recommend' in logged
            assert "/health" not in logged

            # passive health: with one replica down, every request still succeeds on the other
            second.stop()
            answers = [_request(port, "GET", "/model") for _ in range(10)]
            assert [(s, b) for s, b, _ in answers] == [(200, "replica-1")] * 10
    finally:
        first.stop()
        with contextlib.suppress(Exception):
            second.stop()
