#!/usr/bin/env bash
# Validate deploy/kubernetes against the Kubernetes JSON schemas, strictly (an
# unknown field is an error), for the oldest and newest Kubernetes the manifests
# support. The validator is PyPI's kubernetes-validate, which carries the schemas:
#
#   python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate==1.37.0
#   KUBERNETES_VALIDATE=/tmp/kv/bin/kubernetes-validate deploy/kubernetes/validate.sh
#
# extras/servicemonitor.yaml is a Prometheus Operator resource, which has no
# Kubernetes schema: tests/deploy.rs checks that its port and path exist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
validator=${KUBERNETES_VALIDATE:-kubernetes-validate}
# 1.30: the first release with the preStop `sleep` action on by default.
versions=(-k 1.30 -k 1.37)
files=(herald.yaml redis.yaml extras/hpa.yaml)
set +e
out=$("$validator" --strict "${versions[@]}" "${files[@]}" 2>&1)
rc=$?
set -e
echo "$out"
# A kind the validator has no schema for is only a warning there: an error here.
if grep -q '^WARN' <<<"$out"; then
    echo "validate.sh: a resource was not validated (no schema)" >&2
    exit 1
fi
if ! grep -q '^INFO' <<<"$out"; then
    echo "validate.sh: nothing was validated" >&2
    exit 1
fi
exit "$rc"
