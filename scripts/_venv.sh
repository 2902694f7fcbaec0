# Sourced by scripts/test-all and scripts/demo: a virtualenv in $VENV with xtm-composer installed.
ensure_venv() {
  local extras=$1
  if [ ! -x "$VENV/bin/python" ]; then
    printf '%s: creating %s\n' "${0##*/}" "$VENV" >&2
    python3 -m venv "$VENV"
  fi
  printf '%s: installing xtm-composer%s\n' "${0##*/}" "${extras:+ [$extras]}" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import composer_core, composer_plugins.docker" >/dev/null
}
