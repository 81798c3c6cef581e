#!/usr/bin/env bash
# Build and run herald's container image the way the Dockerfile's final stage
# defines it (user, environment, STOPSIGNAL, HEALTHCHECK, ENTRYPOINT), with podman.
#
# This machine reaches no container registry, so the Dockerfile's own stages
# (a Rust image, then distroless) cannot be pulled here. This script takes the
# Dockerfile, keeps its final stage as written, and swaps only its base and its
# binary: `FROM scratch` and a statically linked herald built here. Then it
# checks what a runtime sees: the HEALTHCHECK passes, /health/live answers,
# publishing needs the token, logs are JSON without escape codes, and
# `podman stop` (SIGTERM) ends it with exit code 0 within the grace period.
#
#   deploy/container/check.sh            # needs podman (Debian: apt-get install podman)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
command -v podman >/dev/null || { echo "check.sh: podman is missing (apt-get install podman runc)" >&2; exit 1; }
# This sandbox's cgroups are v1 mounted by hand: crun refuses them, runc with
# cgroupfs works. Elsewhere PODMAN_FLAGS= (empty) uses podman's defaults.
read -r -a podman_flags <<<"${PODMAN_FLAGS---runtime runc --cgroup-manager=cgroupfs}"
podman() { command podman "${podman_flags[@]}" "$@"; }
work=$(mktemp -d)
name=herald-check-$$
tag=localhost/herald-check:$$
cleanup() {
    podman rm -f "$name" "$name-flags" >/dev/null 2>&1 || true
    podman rmi -f "$tag" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== a static herald"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=${STATIC_TARGET_DIR:-$ROOT/target/static} \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu --bin herald --manifest-path "$ROOT/Cargo.toml"
cp "${STATIC_TARGET_DIR:-$ROOT/target/static}/x86_64-unknown-linux-gnu/release/herald" "$work/herald"
if ldd "$work/herald" 2>&1 | grep -q '=>'; then
    echo "check.sh: the binary is not static" >&2
    exit 1
fi

echo "== the Dockerfile's final stage on scratch"
# From the last FROM on; its base and its COPY --from=build are the only lines changed.
awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END {printf "%s", stage}' "$ROOT/Dockerfile" >"$work/final"
grep -q '^COPY --from=build /herald /herald$' "$work/final" || { echo "check.sh: the final stage no longer copies /herald from build" >&2; exit 1; }
sed -e '1s#^FROM .*#FROM scratch#' -e 's#^COPY --from=build /herald /herald$#COPY herald /herald#' "$work/final" >"$work/Containerfile"
cat "$work/Containerfile"
# Docker's format: OCI images have no HEALTHCHECK.
podman build --quiet --format docker -t "$tag" -f "$work/Containerfile" "$work" >/dev/null

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=check-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
# The host's network (this sandbox gives containers no network of their own), and
# limits podman may set here (its defaults are above this machine's hard limits);
# the soft open-file limit is left low, as on most hosts: herald raises it.
podman run -d --name "$name" --network host \
    --ulimit "nofile=1024:$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    -e HERALD_LISTEN="127.0.0.1:$port" -e HERALD_PUBLISHER_TOKEN="$token" -e HERALD_GRACE_PERIOD=3s \
    "$tag" >/dev/null

echo "== running"
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/health/live"
echo
[[ $(podman inspect --format '{{.Config.User}}' "$name") == 65532:65532 ]] || { echo "check.sh: not user 65532" >&2; exit 1; }
[[ $(podman inspect --format '{{.Config.StopSignal}}' "$name") =~ (SIGTERM|15) ]] || { echo "check.sh: stop signal is not SIGTERM" >&2; exit 1; }
podman healthcheck run "$name" && echo "HEALTHCHECK: healthy"

echo "== flags on the command line (docker run … herald --listen …)"
# The HEALTHCHECK runs beside herald with the image's environment only
# (HERALD_LISTEN=0.0.0.0:8080): it must check the port given as a flag.
port2=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
podman run -d --name "$name-flags" --network host \
    --ulimit "nofile=1024:$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    -e HERALD_PUBLISHER_TOKEN="$token" "$tag" --listen "127.0.0.1:$port2" >/dev/null
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port2/health/live" >/dev/null 2>&1 && break
    sleep 0.1
done
podman healthcheck run "$name-flags" && echo "HEALTHCHECK with --listen as a flag: healthy"
podman rm -f "$name-flags" >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -d '{"data":"x","target":"all"}' "http://127.0.0.1:$port/api/broadcast")
[[ $code == 401 ]] || { echo "check.sh: publish without the token answered $code" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -H "authorization: Bearer $token" -d '{"data":"x","target":"all"}' "http://127.0.0.1:$port/api/broadcast")
[[ $code == 202 ]] || { echo "check.sh: publish with the token answered $code" >&2; exit 1; }

echo "== podman stop (SIGTERM)"
started=$SECONDS
podman stop -t 20 "$name" >/dev/null
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
echo "exit code $exit_code after $((SECONDS - started)) s"
[[ $exit_code == 0 ]] || { echo "check.sh: herald exited $exit_code on SIGTERM" >&2; exit 1; }
podman logs "$name" >"$work/logs" 2>&1
if grep -q $'\x1b' "$work/logs"; then
    echo "check.sh: escape codes in the container's logs" >&2
    exit 1
fi
python3 - "$work/logs" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip() and not l.startswith("herald listening")]
for l in lines:
    json.loads(l)
assert any("signal received" in l for l in lines), "no drain line"
assert any("raised the open-file limit" in l and "1024" in l for l in lines), "soft limit not raised"
print(f"{len(lines)} JSON log lines")
PY
echo "check.sh: ok"
