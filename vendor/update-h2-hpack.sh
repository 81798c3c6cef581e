#!/usr/bin/env bash
# vendor/h2-hpack is h2's HPACK decoder: the files listed in UPSTREAM_FILES below,
# taken from the h2 crate as published on crates.io (the release recorded in
# vendor/h2-hpack/UPSTREAM), with vendor/h2-hpack/herald.patch applied. This
# script is the only thing that writes them.
#
#   vendor/update-h2-hpack.sh VERSION    take h2 VERSION (e.g. 0.4.22, or `latest`
#                                        for the newest 0.4.x): its checksum from
#                                        the crates.io index, herald.patch applied,
#                                        VERSION and checksum recorded in UPSTREAM,
#                                        and the rest of the workspace moved to it
#                                        (cargo update -p h2 --precise VERSION)
#   vendor/update-h2-hpack.sh --check    the vendored files are exactly the recorded
#                                        release's with herald.patch applied
#                                        (exit 0; 1 if not; 77 if the release cannot
#                                        be had without a network that is not there)
#   vendor/update-h2-hpack.sh --make-patch [VERSION]
#                                        rewrite herald.patch as the differences
#                                        between the vendored files and VERSION (by
#                                        default the recorded release), and record
#                                        VERSION: after editing the files by hand
#   vendor/update-h2-hpack.sh --port VERSION
#                                        when herald.patch no longer applies: write
#                                        VERSION's files with the hunks that do, and
#                                        a .rej file beside each file for the rest
#                                        (fix them, delete the .rej files, then
#                                        --make-patch VERSION and --check)
#
# The release comes from cargo's download cache when cargo has it (the workspace
# builds h2 for hyper), else from static.crates.io; either way its sha256 must be
# the recorded one (or, for a new VERSION, the index's). The patch is applied with
# `patch --fuzz=0`: a hunk whose context upstream changed stops the script, and
# nothing is written.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate=$here/h2-hpack
upstream_file=$crate/UPSTREAM
patch_file=$crate/herald.patch

# What is taken from the published crate, at the same paths.
UPSTREAM_FILES=(
    LICENSE
    src/ext.rs
    src/hpack/mod.rs
    src/hpack/decoder.rs
    src/hpack/header.rs
    src/hpack/huffman/mod.rs
    src/hpack/huffman/decode.rs
    src/hpack/huffman/encode.rs
    src/hpack/huffman/table.rs
)
# herald's own files in the vendored crate (not written here).
OWN_FILES=(
    Cargo.toml
    README.md
    UPSTREAM
    herald.patch
    src/lib.rs
    tests/upstream.rs
)

die() {
    echo "update-h2-hpack: $*" >&2
    exit 1
}
skip() {
    echo "update-h2-hpack: skipped: $*" >&2
    exit 77
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

for tool in curl sha256sum tar patch diff cmp; do
    if ! command -v "$tool" >/dev/null; then
        [[ ${1:-} != --check ]] || skip "needs $tool"
        die "needs $tool"
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

recorded() { # KEY: its value in UPSTREAM
    sed -n "s/^$1 = \(.*\)$/\1/p" "$upstream_file"
}

index_lines() { # every release of h2 in the crates.io index, a JSON object a line
    curl -sSf --connect-timeout 10 --max-time 60 https://index.crates.io/2/h2 ||
        die "cannot read h2's entry in the crates.io index"
}

# The published crate VERSION with sha256 SUM, extracted to $tmp/h2-VERSION.
# OFFLINE_OK=1: a download that fails for want of a network skips (exit 77).
fetch() {
    local version=$1 sum=$2 file=$tmp/h2-$1.crate cached
    cached=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "h2-$version.crate" 2>/dev/null | head -n 1 || true)
    if [[ -n $cached ]] && [[ $(sha256sum "$cached" | cut -d' ' -f1) == "$sum" ]]; then
        cp "$cached" "$file"
    else
        local rc=0
        curl -sSfL --connect-timeout 10 --max-time 120 -o "$file" \
            "https://static.crates.io/crates/h2/h2-$version.crate" || rc=$?
        if ((rc != 0)); then
            # No network: 5, 6 no name resolution (proxy, host), 7 no connection,
            # 28 timed out, 35 no TLS handshake, 56 connection cut.
            if [[ ${OFFLINE_OK:-0} == 1 ]] && [[ " 5 6 7 28 35 56 " == *" $rc "* ]]; then
                skip "h2 $version is neither in cargo's cache nor downloadable (curl exit $rc)"
            fi
            die "downloading h2 $version failed (curl exit $rc)"
        fi
        local got
        got=$(sha256sum "$file" | cut -d' ' -f1)
        [[ $got == "$sum" ]] || die "h2-$version.crate has sha256 $got, not $sum"
    fi
    tar -xzf "$file" -C "$tmp"
    [[ -d $tmp/h2-$version ]] || die "h2-$version.crate holds no h2-$version/"
}

# Upstream's files of the extracted VERSION, copied to DIR.
pristine() {
    local version=$1 dir=$2 f
    for f in "${UPSTREAM_FILES[@]}"; do
        [[ -f $tmp/h2-$version/$f ]] || die "h2 $version has no $f: UPSTREAM_FILES needs updating"
        mkdir -p "$(dirname "$dir/$f")"
        cp "$tmp/h2-$version/$f" "$dir/$f"
        chmod 644 "$dir/$f"
    done
}

# The vendored files as they should be for VERSION, in DIR.
expected() {
    local version=$1 dir=$2
    pristine "$version" "$dir"
    if ! patch -d "$dir" -p1 --fuzz=0 --batch --forward --no-backup-if-mismatch \
        --reject-file=- --quiet <"$patch_file"; then
        die "herald.patch does not apply to h2 $version: see --port"
    fi
}

check() {
    local version sum f status=0
    version=$(recorded version)
    sum=$(recorded sha256)
    [[ -n $version && -n $sum ]] || die "UPSTREAM records no version or sha256"
    OFFLINE_OK=1 fetch "$version" "$sum"
    expected "$version" "$tmp/expected"
    for f in "${UPSTREAM_FILES[@]}"; do
        if ! cmp -s "$tmp/expected/$f" "$crate/$f"; then
            echo "update-h2-hpack: $f is not h2 $version's with herald.patch applied:" >&2
            diff -u --label "expected/$f" --label "vendor/h2-hpack/$f" \
                "$tmp/expected/$f" "$crate/$f" >&2 || true
            status=1
        fi
    done
    # Nothing else in the crate but herald's own files.
    while IFS= read -r f; do
        f=${f#./}
        if [[ " ${UPSTREAM_FILES[*]} ${OWN_FILES[*]} " != *" $f "* ]]; then
            echo "update-h2-hpack: vendor/h2-hpack/$f is neither upstream's nor listed as herald's" >&2
            status=1
        fi
    done < <(cd "$crate" && find . -path ./target -prune -o -type f -print | sort)
    ((status == 0)) || exit 1
    echo "update-h2-hpack: vendor/h2-hpack is h2 $version ($sum) with herald.patch applied"
}

# Sets version and sum: VERSION (`latest`: the newest 0.4.x) and its sha256,
# recorded in UPSTREAM or else from the crates.io index.
resolve() {
    local line
    version=$1
    if [[ $version == latest ]]; then
        version=$(index_lines | grep -E '"yanked": *false' |
            sed -n 's/^.*"vers": *"\(0\.4\.[0-9]*\)".*$/\1/p' | sort -V | tail -n 1)
        [[ -n $version ]] || die "no 0.4.x release of h2 in the index"
    fi
    [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a release version: $version"
    if [[ $version == "$(recorded version)" ]]; then
        sum=$(recorded sha256)
    else
        line=$(index_lines | grep -E "\"vers\": *\"${version//./\\.}\"" || true)
        [[ -n $line ]] || die "h2 $version is not in the crates.io index"
        ! grep -qE '"yanked": *true' <<<"$line" || die "h2 $version is yanked"
        sum=$(sed -n 's/^.*"cksum": *"\([0-9a-f]\{64\}\)".*$/\1/p' <<<"$line")
        [[ -n $sum ]] || die "no checksum for h2 $version in the index"
    fi
}

# UPSTREAM and the crate's version say $version.
record() {
    {
        echo "# The h2 release vendor/h2-hpack is taken from (crates.io), and the"
        echo "# sha256 of its .crate file. Written by vendor/update-h2-hpack.sh."
        echo "version = $version"
        echo "sha256 = $sum"
    } >"$upstream_file"
    sed -i "s/^version = \".*\"$/version = \"$version\"/" "$crate/Cargo.toml"
    sed -i "s/^Upstream: \*\*h2 [0-9.]*\*\*/Upstream: **h2 $version**/" "$crate/README.md"
}

update() {
    local f
    resolve "$1"
    fetch "$version" "$sum"
    expected "$version" "$tmp/expected"
    for f in "${UPSTREAM_FILES[@]}"; do
        mkdir -p "$(dirname "$crate/$f")"
        cp "$tmp/expected/$f" "$crate/$f"
    done
    record
    echo "update-h2-hpack: vendor/h2-hpack is now h2 $version with herald.patch applied"
    # The rest of the workspace (hyper's h2 in the tests, the load client) too.
    local locked
    locked=$(sed -n '/^name = "h2"$/{n;s/^version = "\(.*\)"$/\1/p;}' "$here/../Cargo.lock")
    if [[ $locked != "$version" ]]; then
        (cd "$here/.." && cargo update -p h2 --precise "$version")
    fi
}

# herald.patch as far as it goes on VERSION, written into the crate, with a
# .rej file beside each file whose hunks did not apply.
port() {
    resolve "$1"
    fetch "$version" "$sum"
    pristine "$version" "$crate"
    if patch -d "$crate" -p1 --fuzz=0 --batch --forward --no-backup-if-mismatch <"$patch_file"; then
        echo "update-h2-hpack: herald.patch applies to h2 $version: run $0 $version instead"
    else
        echo "update-h2-hpack: h2 $version's files are in vendor/h2-hpack with what of herald.patch applies;"
        echo "make the rest of the changes the .rej files show, delete them, then: $0 --make-patch $version"
    fi
}

# herald.patch rewritten as the differences between the vendored files and
# VERSION (by default the recorded one), which UPSTREAM then records.
make_patch() {
    local f
    resolve "${1:-$(recorded version)}"
    fetch "$version" "$sum"
    pristine "$version" "$tmp/a"
    {
        echo "herald's changes to the h2 crate's HPACK decoder (vendor/h2-hpack/README.md),"
        echo "each marked \`// herald:\` in the code. A diff against the release recorded in"
        echo "UPSTREAM, applied by vendor/update-h2-hpack.sh; written by its --make-patch."
        echo
        for f in "${UPSTREAM_FILES[@]}"; do
            diff -u --label "a/$f" --label "b/$f" "$tmp/a/$f" "$crate/$f" || true
        done
    } >"$tmp/herald.patch"
    mv "$tmp/herald.patch" "$patch_file"
    record
    echo "update-h2-hpack: herald.patch written against h2 $version"
}

case ${1:-} in
--check) check ;;
--make-patch) make_patch "${2:-}" ;;
--port) [[ -n ${2:-} ]] || usage; port "$2" ;;
-h | --help | "") usage ;;
-*) usage ;;
*) update "$1" ;;
esac
