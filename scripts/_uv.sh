# Sourced by the scripts: make `uv` available (installed from PyPI if the machine lacks it).
if ! command -v uv >/dev/null 2>&1; then
  if ! python3 -m uv --version >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check uv
  fi
  uv() { python3 -m uv "$@"; }
fi
export UV_PYTHON="${UV_PYTHON:-python3}"
