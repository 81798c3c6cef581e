#!/usr/bin/env bash
# Check deploy/systemd/herald.service with `systemd-analyze verify`: unknown keys,
# bad values and a missing binary are errors (systemd-analyze only warns about
# some of them, so any output fails). The unit is checked as shipped, with its
# ExecStart pointed at the herald binary given (default: target/debug/herald).
#
#   deploy/systemd/verify.sh [path/to/herald]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(realpath "${1:-$here/../../target/debug/herald}")
[[ -x $bin ]] || { echo "verify.sh: no herald binary at $bin (cargo build first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#^ExecStart=/usr/local/bin/herald#ExecStart=$bin#" "$here/herald.service" >"$tmp/herald.service"
grep -q "^ExecStart=$bin" "$tmp/herald.service" || { echo "verify.sh: ExecStart changed shape" >&2; exit 1; }
out=$(systemd-analyze verify "$tmp/herald.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [[ -n $out ]]; then
    echo "$out" >&2
    exit 1
fi
echo "verify.sh: herald.service ok"
