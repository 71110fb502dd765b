#!/usr/bin/env bash
# Remove the tokmesh-server service, its virtual environment and its user (05 §10).
# Configuration, data and logs are KEPT; the command to delete them is printed at the end.
#
# Usage: sudo scripts/uninstall-linux.sh [-y]    (-y: do not ask)
set -euo pipefail

PREFIX=/opt/tokmesh
UNIT=/etc/systemd/system/tokmesh-server.service

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (sudo $0)" >&2; exit 1; }

if [ "${1:-}" != "-y" ]; then
  printf 'This stops tokmesh-server and removes the service, %s and the user tokmesh.\n' "$PREFIX"
  printf 'Continue? [y/N] '
  read -r answer || answer=""
  case "$answer" in
    y|Y|yes|YES) ;;
    *) echo "Aborted."; exit 0 ;;
  esac
fi

if command -v systemctl >/dev/null; then
  systemctl stop tokmesh-server.service 2>/dev/null || true
  systemctl disable tokmesh-server.service 2>/dev/null || true
  rm -f "$UNIT"
  systemctl daemon-reload
  systemctl reset-failed tokmesh-server.service 2>/dev/null || true
else
  rm -f "$UNIT"
fi

for script in tokmesh-server tokmesh-cli; do
  if [ -L "/usr/local/bin/$script" ]; then rm -f "/usr/local/bin/$script"; fi
done
rm -rf "$PREFIX"

if id -u tokmesh >/dev/null 2>&1; then userdel tokmesh || true; fi
if getent group tokmesh >/dev/null; then groupdel tokmesh 2>/dev/null || true; fi

cat <<'KEPT'
tokmesh-server removed. Kept (delete them yourself if you no longer need them):
  /etc/tokmesh-server  /var/lib/tokmesh-server  /var/log/tokmesh-server
  rm -rf /etc/tokmesh-server /var/lib/tokmesh-server /var/log/tokmesh-server
KEPT
