#!/usr/bin/env bash
# Start the Timbral MLflow tracking server, configured by environment variables.
#
#   MLFLOW_BACKEND_STORE_URI       runs/experiments/registry database  (default sqlite:///mlflow.db)
#                                  production: postgresql://user:password@host:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION   where proxied artifacts are stored  (default s3://timbral-artifacts/mlflow)
#                                  S3 needs AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and
#                                  MLFLOW_S3_ENDPOINT_URL for MinIO or another non-AWS store
#   MLFLOW_HOST                    bind address                         (default 127.0.0.1; 0.0.0.0 in a container)
#   MLFLOW_PORT                    port                                 (default 5000)
#   MLFLOW_WORKERS                 uvicorn worker processes             (default 2)
#   MLFLOW_ALLOWED_HOSTS           comma-separated Host headers the server answers (MLflow >= 3.17 answers
#                                  403 to others); unset: MLflow's default, localhost and private IPs only.
#                                  In Kubernetes: the Service name (mlflow, mlflow:5000), its FQDN and the
#                                  ingress host. /health is always answered.
#   MLFLOW_CORS_ALLOWED_ORIGINS    optional, comma-separated origins for the browser UI on other domains
#   MLFLOW_PROMETHEUS_DIR          optional: expose /metrics, using this directory for multiprocess files
#   MLFLOW_DB_UPGRADE              auto (default): run `mlflow db upgrade` first for a database backend
#                                  (postgresql, mysql, mssql, sqlite); true: always; false: never
#   MLFLOW_BIN                     the mlflow executable (default: `mlflow` on PATH)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's own switch for its GenAI job runner (eight huey processes
#                                  beside the server); default false here: Timbral runs no server jobs
#
# The server replaces this shell (exec), so it receives SIGTERM directly from the container runtime.
set -Eeuo pipefail

backend_store_uri="${MLFLOW_BACKEND_STORE_URI:-sqlite:///mlflow.db}"
artifacts_destination="${MLFLOW_ARTIFACTS_DESTINATION:-s3://timbral-artifacts/mlflow}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
allowed_hosts="${MLFLOW_ALLOWED_HOSTS:-}"
cors_allowed_origins="${MLFLOW_CORS_ALLOWED_ORIGINS:-}"
prometheus_dir="${MLFLOW_PROMETHEUS_DIR:-}"
db_upgrade="${MLFLOW_DB_UPGRADE:-auto}"
mlflow_bin="${MLFLOW_BIN:-mlflow}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

log() { printf '%s start-server: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 64; }

# The URI may carry a password: log it with the credentials masked.
redact() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#'; }

[[ "$port" =~ ^[0-9]+$ ]] || die "MLFLOW_PORT must be a number, got '$port'"
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "MLFLOW_WORKERS must be a positive number, got '$workers'"
command -v "$mlflow_bin" >/dev/null 2>&1 || die "'$mlflow_bin' not found on PATH"

is_database=false
case "$backend_store_uri" in
  postgresql*://* | mysql*://* | mssql*://* | sqlite:///*) is_database=true ;;
esac

case "$db_upgrade" in
  auto) run_upgrade="$is_database" ;;
  true | 1 | yes) run_upgrade=true ;;
  false | 0 | no) run_upgrade=false ;;
  *) die "MLFLOW_DB_UPGRADE must be auto, true or false, got '$db_upgrade'" ;;
esac

if [[ "$run_upgrade" == true ]]; then
  # Creates the schema on an empty database and applies pending migrations after an MLflow upgrade.
  # One server at a time should do this: run a single replica, or a rolling update with maxSurge 1.
  log "mlflow db upgrade $(redact "$backend_store_uri")"
  "$mlflow_bin" db upgrade "$backend_store_uri"
fi

args=(
  server
  --backend-store-uri "$backend_store_uri"
  --artifacts-destination "$artifacts_destination"
  --serve-artifacts
  --host "$host"
  --port "$port"
  --workers "$workers"
)
if [[ -n "$allowed_hosts" ]]; then
  args+=(--allowed-hosts "$allowed_hosts")
fi
if [[ -n "$cors_allowed_origins" ]]; then
  args+=(--cors-allowed-origins "$cors_allowed_origins")
fi
if [[ -n "$prometheus_dir" ]]; then
  args+=(--expose-prometheus "$prometheus_dir")
fi

log "mlflow server on ${host}:${port} (workers ${workers}), backend $(redact "$backend_store_uri"), artifacts ${artifacts_destination}, allowed hosts: ${allowed_hosts:-MLflow default}"
exec "$mlflow_bin" "${args[@]}"
