#!/usr/bin/env bash
# Build the vCenter simulator (deploy/vcsim/main.go, govmomi 0.24 from Debian) to OUTPUT_PATH.
#
#   deploy/vcsim/build.sh [OUTPUT_PATH]     (default: build/vcsim under the repository root)
#
# Needs go and govmomi's sources under /usr/share/gocode; if either is missing it installs
# the Debian packages golang-go and golang-github-vmware-govmomi-dev (apt-get, as root).
# No download outside Debian's packages. Safe to run again: it rebuilds over OUTPUT_PATH.
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd -- "${script_dir}/../.." && pwd)"
output="${1:-${repo_root}/build/vcsim}"
gopath=/usr/share/gocode
govmomi_src="${gopath}/src/github.com/vmware/govmomi/simulator"

if ! command -v go >/dev/null 2>&1 || [[ ! -d "${govmomi_src}" ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "build.sh: go or govmomi's sources (${govmomi_src}) are missing: run this as" \
            "root, or apt-get install golang-go golang-github-vmware-govmomi-dev" >&2
        exit 1
    fi
    echo "build.sh: installing golang-go and golang-github-vmware-govmomi-dev" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends golang-go golang-github-vmware-govmomi-dev
fi

tmp_cache=""
tmp_out=""
cleanup() {
    [[ -z "${tmp_out}" ]] || rm -f -- "${tmp_out}"
    [[ -z "${tmp_cache}" ]] || rm -rf -- "${tmp_cache}"
}
trap cleanup EXIT

# go needs a writable build cache; HOME may be read-only (or unset) in CI and containers.
if [[ -z "${GOCACHE:-}" && ( -z "${HOME:-}" || ! -w "${HOME}" ) ]]; then
    tmp_cache="$(mktemp -d "${TMPDIR:-/tmp}/vcsim-gocache.XXXXXX")"
    export GOCACHE="${tmp_cache}"
fi

mkdir -p -- "$(dirname -- "${output}")"
output="$(cd -- "$(dirname -- "${output}")" && pwd)/$(basename -- "${output}")"

# Build next to the target and rename, so a running or concurrent reader never sees a
# half-written binary.
tmp_out="$(mktemp "${output}.tmp.XXXXXX")"

cd -- "${script_dir}"
GOPATH="${gopath}" GO111MODULE=off CGO_ENABLED=0 \
    go build -trimpath -o "${tmp_out}" ./main.go
chmod 0755 "${tmp_out}"
mv -f -- "${tmp_out}" "${output}"
tmp_out=""
echo "build.sh: built ${output}" >&2
