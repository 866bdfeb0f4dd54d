#!/usr/bin/env bash
# The byzer-like image's entrypoint: one image, several roles.
#
#   head      the Ray head: GCS on $RAY_PORT (6379), dashboard and Ray Jobs API on $RAY_DASHBOARD_PORT
#             (8265), Ray Client on $RAY_CLIENT_SERVER_PORT (10001); blocks until stopped
#   worker    a Ray worker node joining $RAY_HEAD_ADDRESS (head:6379); blocks until stopped
#   api       joins as a Ray node (no CPUs by default, so no model replica lands on it), then runs
#             `byzer-like serve --host 0.0.0.0 --port 8000 --replace` in the foreground; needs
#             BYZER_LIKE_API_KEY (refuses to start without one)
#   health ROLE   the container health check of that role (exit status 0: healthy)
#   anything else runs as given, e.g. `byzer-like run script.sql` or `bash`
#
# Ray token authentication: RAY_AUTH_MODE=token with the same RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH,
# a file holding it) on every node and every driver. A token given without RAY_AUTH_MODE turns token
# mode on; token mode without a token is refused, since Ray would not start. GPUs: RAY_NUM_GPUS.
# docs/cluster.md describes every variable read here.
set -euo pipefail

role="${1:-}"

log() { printf '[byzer-like-entrypoint] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 64; }

# A token without a mode means token mode: Ray only looks for the token when RAY_AUTH_MODE=token.
if [[ -z "${RAY_AUTH_MODE:-}" && ( -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" ) ]]; then
    export RAY_AUTH_MODE=token
fi

check_ray_auth() {
    case "${RAY_AUTH_MODE:-}" in
        token)
            if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
                return 0
            fi
            if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
                [[ -s "${RAY_AUTH_TOKEN_PATH}" ]] || die "RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH} is not a readable, non-empty file"
                return 0
            fi
            [[ -s "${HOME:-/nonexistent}/.ray/auth_token" ]] && return 0
            die "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN (the same on every node; make one with
  python3 -c 'import secrets; print(secrets.token_hex(32))') or RAY_AUTH_TOKEN_PATH"
            ;;
        ""|disabled)
            log "warning: Ray token authentication is off (RAY_AUTH_MODE=${RAY_AUTH_MODE:-unset}): anyone who reaches"
            log "         this node's Ray ports can run code on the cluster; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
            ;;
        *)
            die "RAY_AUTH_MODE=${RAY_AUTH_MODE} is neither token nor disabled"
            ;;
    esac
}

# Flags every node gets: this node's CPUs and GPUs when given, then any extra flags.
resource_args() {
    local default_cpus="${1:-}"
    local cpus="${RAY_NUM_CPUS:-$default_cpus}"
    node_args=(--disable-usage-stats "--dashboard-agent-listen-port=${RAY_DASHBOARD_AGENT_LISTEN_PORT:-52365}")
    if [[ -n "$cpus" ]]; then
        node_args+=("--num-cpus=${cpus}")
    fi
    if [[ -n "${RAY_NUM_GPUS:-}" ]]; then
        node_args+=("--num-gpus=${RAY_NUM_GPUS}")
    fi
    if [[ -n "${RAY_START_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<< "${RAY_START_ARGS}"
        node_args+=("${extra[@]}")
    fi
}

# GET a URL on this container, optionally with the API key; status 0 on HTTP 200.
http_ok() {
    python3 - "$1" "${2:-}" <<'PY'
import sys, urllib.request
url, key = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:  # connection refused, 401, timeout
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
PY
}

health() {
    case "${1:-}" in
        head) http_ok "http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}/api/gcs_healthz" ;;
        worker|node) http_ok "http://127.0.0.1:${RAY_DASHBOARD_AGENT_LISTEN_PORT:-52365}/api/local_raylet_healthz" ;;
        api)
            [[ -n "${BYZER_LIKE_API_KEY:-}" ]] || die "health api: BYZER_LIKE_API_KEY is not set"
            http_ok "http://127.0.0.1:${BYZER_LIKE_API_PORT:-8000}/health" "${BYZER_LIKE_API_KEY}"
            ;;
        *) die "health: say which role to check: head, worker or api" ;;
    esac
}

run_head() {
    check_ray_auth
    resource_args ""
    log "starting the Ray head: GCS :${RAY_PORT:-6379}, dashboard + Jobs API :${RAY_DASHBOARD_PORT:-8265}, Ray Client :${RAY_CLIENT_SERVER_PORT:-10001}"
    exec ray start --head --block \
        "--port=${RAY_PORT:-6379}" \
        --dashboard-host=0.0.0.0 "--dashboard-port=${RAY_DASHBOARD_PORT:-8265}" \
        "--ray-client-server-port=${RAY_CLIENT_SERVER_PORT:-10001}" \
        "${node_args[@]}"
}

run_worker() {
    check_ray_auth
    resource_args ""
    log "joining the Ray cluster at ${RAY_HEAD_ADDRESS:-head:6379}"
    exec ray start "--address=${RAY_HEAD_ADDRESS:-head:6379}" --block "${node_args[@]}"
}

# -- api: a Ray node in the background, the HTTP API in the foreground --------------------------------
ray_pid=""
serve_pid=""
stopping=0

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Wait up to $2 seconds for process $1 to end.
wait_gone() {
    local pid="$1" deadline=$((SECONDS + $2))
    while alive "$pid" && (( SECONDS < deadline )); do
        sleep 0.2
    done
    ! alive "$pid"
}

stop_all() {
    if alive "$serve_pid"; then
        # Ctrl-C is what `byzer-like serve` takes as "stop": it removes the API from the cluster.
        kill -INT "$serve_pid" 2>/dev/null || true
        wait_gone "$serve_pid" 30 || kill -TERM "$serve_pid" 2>/dev/null || true
    fi
    if alive "$ray_pid"; then
        # the node's own process group (job control is on): ray start and what it started
        kill -TERM -- "-$ray_pid" 2>/dev/null || kill -TERM "$ray_pid" 2>/dev/null || true
        wait_gone "$ray_pid" 30 || kill -KILL -- "-$ray_pid" 2>/dev/null || true
    fi
}

run_api() {
    local key="${BYZER_LIKE_API_KEY:-}"
    if [[ -z "$key" ]]; then
        die "the api role needs BYZER_LIKE_API_KEY (every request must carry it as 'Authorization: Bearer <key>');
  make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    fi
    if (( ${#key} < 16 )); then
        die "BYZER_LIKE_API_KEY is ${#key} characters long; use at least 16 (a random one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    fi
    check_ray_auth
    # Drivers on this node reach the cluster through the raylet started here.
    export RAY_ADDRESS="${RAY_ADDRESS:-${RAY_HEAD_ADDRESS:-head:6379}}"

    # Job control puts each background process in a process group of its own and, unlike a plain `&`,
    # leaves SIGINT as it is, so `byzer-like serve` can be stopped with Ctrl-C's signal.
    set -m
    trap 'stopping=1' TERM INT
    if [[ -n "${KUBERAY_GEN_RAY_START_CMD:-}" ]]; then
        log "joining the Ray cluster with KubeRay's command"
        bash -c "${KUBERAY_GEN_RAY_START_CMD}" &
    else
        resource_args 0
        log "joining the Ray cluster at ${RAY_HEAD_ADDRESS:-head:6379} (as the API's node)"
        ray start "--address=${RAY_HEAD_ADDRESS:-head:6379}" --block "${node_args[@]}" &
    fi
    ray_pid=$!

    local deadline=$((SECONDS + ${RAY_NODE_TIMEOUT_S:-180}))
    until health node 2>/dev/null; do
        if ! alive "$ray_pid"; then
            wait "$ray_pid" || true
            die "the Ray node did not start (is the head at ${RAY_HEAD_ADDRESS:-head:6379} up, with the same RAY_AUTH_TOKEN?)"
        fi
        if (( stopping )); then
            stop_all
            exit 0
        fi
        if (( SECONDS >= deadline )); then
            stop_all
            die "the Ray node was not ready after ${RAY_NODE_TIMEOUT_S:-180} s"
        fi
        sleep 1
    done

    local serve_args=(serve --host "${BYZER_LIKE_API_HOST:-0.0.0.0}" --port "${BYZER_LIKE_API_PORT:-8000}" --replace)
    if [[ -n "${BYZER_LIKE_SERVE_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<< "${BYZER_LIKE_SERVE_ARGS}"
        serve_args+=("${extra[@]}")
    fi
    log "starting the HTTP API on ${BYZER_LIKE_API_HOST:-0.0.0.0}:${BYZER_LIKE_API_PORT:-8000} (the key comes from BYZER_LIKE_API_KEY)"
    byzer-like "${serve_args[@]}" &
    serve_pid=$!

    local rc=0
    while true; do
        if (( stopping )); then
            log "stopping"
            stop_all
            exit 0
        fi
        if ! alive "$serve_pid"; then
            wait "$serve_pid" && rc=0 || rc=$?
            log "the HTTP API ended (status $rc); leaving the cluster"
            stop_all
            exit "$rc"
        fi
        if ! alive "$ray_pid"; then
            log "the Ray node ended; stopping the HTTP API"
            stop_all
            exit 1
        fi
        sleep 1 &
        wait $! || true
    done
}

case "$role" in
    head) run_head ;;
    worker) run_worker ;;
    api) run_api ;;
    health) shift; health "$@" ;;
    "") die "no role given: head, worker, api, health ROLE, or a command to run" ;;
    *) exec "$@" ;;
esac
