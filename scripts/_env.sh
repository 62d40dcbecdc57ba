# Sourced by scripts/test and scripts/example (not run on its own): the one place that
# turns a machine with nothing but python3 (>= 3.11) into the project's environment.
#
#   ms_uv                      a pinned uv in .tools/ (bootstrapped with pip on first use)
#   ms_sync [uv sync args...]  .venv exactly as uv.lock says (--frozen: the lock is never
#                              re-resolved; a pyproject.toml that disagrees with it fails),
#                              with bytecode compiled ahead (see below)
#
# Upgrading dependencies is done on purpose: `.tools/bin/uv lock --upgrade`, then commit
# uv.lock. `scripts/test --latest` tries the newest releases without touching the lock.

MS_UV_VERSION=0.13.9
MS_PYTHON=${MS_PYTHON:-python3}

ms_check_python() {
  if ! command -v "$MS_PYTHON" >/dev/null 2>&1; then
    echo "error: $MS_PYTHON not found; install Python >= 3.11 (or set MS_PYTHON)" >&2
    return 1
  fi
  if ! "$MS_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $("$MS_PYTHON" --version 2>&1) is too old; Mainspring needs Python >= 3.11" \
      "(set MS_PYTHON to a newer interpreter)" >&2
    return 1
  fi
}

ms_uv() {
  # uv pinned by version, installed by pip into a venv of its own: nothing downloads a
  # binary by itself, and a second run costs one `uv --version`.
  if [ "$(.tools/bin/uv --version 2>/dev/null)" != "uv $MS_UV_VERSION" ]; then
    ms_check_python
    if [ ! -x .tools/bin/python ]; then
      "$MS_PYTHON" -m venv .tools
    fi
    .tools/bin/python -m pip install -q --disable-pip-version-check "uv==$MS_UV_VERSION"
  fi
  .tools/bin/uv "$@"
}

ms_sync() {
  ms_check_python
  UV_PROJECT_ENVIRONMENT=.venv ms_uv sync --frozen --compile-bytecode --python "$MS_PYTHON" "$@"
  # Our own packages too: where PYTHONDONTWRITEBYTECODE is set (containers often set
  # it), every process would otherwise compile them again at start. Measured here:
  # `import mainspring` 0.8-1.2 s -> 0.33 s, for each worker, handler and CLI command
  # (a replacement worker takes over that much sooner). Stale caches are ignored.
  .venv/bin/python -m compileall -q -j 0 actors bench client flows handlers mainspring \
    projections schemas servers streams tests >/dev/null
}
