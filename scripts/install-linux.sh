#!/usr/bin/env bash
# Install tokmesh-server as a systemd service (05 §9-§10). Idempotent: run it again to
# upgrade. A changed /etc/tokmesh-server/config.yaml is saved as config.yaml.backup
# before the packaged one replaces it; config.d/ fragments are never touched.
#
# Usage: sudo scripts/install-linux.sh [WHEEL]
#   WHEEL  a tokmesh-*.whl built with `pip wheel --no-deps -w dist .`; without it the
#          source tree this script belongs to is installed.
# Environment: PYTHON (default python3, must be >= 3.11 with the venv module).
set -euo pipefail

PREFIX=/opt/tokmesh
VENV=$PREFIX/venv
CONF_DIR=/etc/tokmesh-server
DATA_DIR=/var/lib/tokmesh-server
LOG_DIR=/var/log/tokmesh-server
UNIT=/etc/systemd/system/tokmesh-server.service
SRC_DIR=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

die() { echo "error: $*" >&2; exit 1; }
warn() { echo "WARN: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -r /etc/os-release ] || die "/etc/os-release not found: not a supported Linux system"
# shellcheck disable=SC1091
. /etc/os-release
echo "Installing tokmesh-server on ${PRETTY_NAME:-$ID}"
command -v systemctl >/dev/null || die "systemctl not found: systemd is required"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (install python3 >= 3.11)"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON must be Python >= 3.11 with the venv module (Debian: apt install python3-venv)"

WHEEL=${1:-}
if [ -n "$WHEEL" ]; then
  [ -f "$WHEEL" ] || die "wheel not found: $WHEEL"
  TARGET=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
else
  [ -f "$SRC_DIR/pyproject.toml" ] || die "no wheel given and no source tree at $SRC_DIR"
  TARGET=$SRC_DIR
fi

# 1. System user: no home directory created, no login shell.
if ! getent group tokmesh >/dev/null; then
  groupadd --system tokmesh
fi
if ! id -u tokmesh >/dev/null 2>&1; then
  useradd --system --gid tokmesh --home-dir "$DATA_DIR" --no-create-home \
    --shell /usr/sbin/nologin tokmesh
fi

# 2. Virtual environment, package, console scripts on PATH.
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "$TARGET"
for script in tokmesh-server tokmesh-cli; do
  ln -sfn "$VENV/bin/$script" "/usr/local/bin/$script"
done

# 3. Directories (05 §9).
install -d -o root -g tokmesh -m 0750 "$CONF_DIR" "$CONF_DIR/certs"
install -d -o tokmesh -g tokmesh -m 0750 "$DATA_DIR" "$DATA_DIR/wal" "$DATA_DIR/snapshots" "$LOG_DIR"

# 4. Configuration (05 §10): the previous file is saved as config.yaml.backup, then the
#    packaged one is installed. Re-apply local changes from the backup, or better keep
#    them in config.d/*.yaml fragments or a systemd drop-in, which are never replaced.
NEW_CONF=$SRC_DIR/deploy/systemd/config.yaml
if [ -f "$NEW_CONF" ]; then
  if [ -f "$CONF_DIR/config.yaml" ] && ! cmp -s "$NEW_CONF" "$CONF_DIR/config.yaml"; then
    cp -p "$CONF_DIR/config.yaml" "$CONF_DIR/config.yaml.backup"
    echo "Previous configuration saved as $CONF_DIR/config.yaml.backup"
  fi
  install -o root -g tokmesh -m 0640 "$NEW_CONF" "$CONF_DIR/config.yaml"
  echo "Installed $CONF_DIR/config.yaml"
else
  warn "no packaged configuration ($NEW_CONF missing); keeping what is in $CONF_DIR"
fi
if [ -f "$CONF_DIR/config.yaml" ]; then
  chown root:tokmesh "$CONF_DIR/config.yaml"
  chmod 0640 "$CONF_DIR/config.yaml"
  /usr/local/bin/tokmesh-server --config "$CONF_DIR/config.yaml" --test >/dev/null \
    || warn "$CONF_DIR/config.yaml does not validate: run tokmesh-server --config $CONF_DIR/config.yaml --test"
fi

# 5. systemd unit.
install -o root -g root -m 0644 "$SRC_DIR/deploy/systemd/tokmesh-server.service" "$UNIT"
systemctl daemon-reload
systemctl enable tokmesh-server.service >/dev/null

cat <<NEXT
tokmesh-server $("/usr/local/bin/tokmesh-server" --version 2>/dev/null | awk '{print $2}') installed.
Next steps:
  1. Review $CONF_DIR/config.yaml (certificates go to $CONF_DIR/certs/).
  2. systemctl start tokmesh-server && systemctl status tokmesh-server
  3. Create the first admin key over the local socket (as root or group tokmesh):
       printf 'EMERGENCY_CREATE_ADMIN_KEY first-admin\n' | \\
         python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect("/var/run/tokmesh-server/tokmesh-server.sock"); s.sendall(sys.stdin.buffer.read()); print(s.recv(65536).decode())'
  4. curl -s http://127.0.0.1:5080/ready
NEXT
