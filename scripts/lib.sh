# Shared by scripts/*: find (or install) uv. Sourced, not run.
# shellcheck shell=bash
repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${repo_root}/build/tools"

ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        return
    fi
    if [[ ! -x "${tools}/bin/uv" ]]; then
        echo "setup: installing uv into build/tools (a private virtualenv)" >&2
        if ! python3 -m venv "${tools}" 2>/dev/null; then
            # Debian splits venv out of python3
            echo "setup: python3-venv is missing; installing it with apt-get" >&2
            rm -rf "${tools}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            python3 -m venv "${tools}"
        fi
        "${tools}/bin/pip" install --quiet --disable-pip-version-check uv
    fi
    export PATH="${tools}/bin:${PATH}"
}
