#!/bin/sh
# Install defender-agent for production on Debian 12 and similar (README, "Install for
# production"): a venv under /opt/defender-agent (the system Python is EXTERNALLY-MANAGED,
# so nothing goes into it), the configuration under /etc/defender-agent/ (never
# overwritten), the system user defender-agent, the systemd units of the agent and of the
# local service, the agent's unit enabled when systemd runs.
#
# Idempotent: run it again to upgrade in place; the configuration and the state
# (/var/lib/defender-agent*) are kept. --uninstall removes the venv and the units and keeps
# the configuration and the state; --uninstall --purge removes those and the user too.
#
#   sudo packaging/install.sh                         # from PyPI (or pip's configured index)
#   sudo packaging/install.sh --from ./dist/defender_agent-0.1.0-py3-none-any.whl
#   sudo packaging/install.sh --uninstall [--purge]
#
# Options:
#   --from SPEC       what pip installs (a wheel, a checkout, a requirement; default
#                     defender-agent, or this checkout when the script runs from one)
#   --pip-args ARGS   more pip arguments (e.g. "--no-index --find-links /srv/wheels")
#   --prefix DIR      where the venv goes (default /opt/defender-agent)
#   --root DIR        install into DIR as if it were / (staging, image builds, tests);
#                     nothing is enabled there
#   --python EXE      the Python for the venv (default /usr/bin/python3, 3.9 or later)
#   --with-service    also enable (and restart) the local service's unit
#   --no-enable       install the units, enable nothing
#   --uninstall       remove; --purge with it also removes config, state and the user
set -eu

PREFIX=/opt/defender-agent
ROOT=
SPEC=
PIP_ARGS=
PYTHON=
ENABLE=yes
WITH_SERVICE=no
UNINSTALL=no
PURGE=no
USER_NAME=defender-agent
HERE=$(cd "$(dirname "$0")" && pwd)
CHECKOUT=$(dirname "$HERE")

die() { echo "install.sh: error: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --from) SPEC=${2:?--from needs a value}; shift 2 ;;
        --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
        --root) ROOT=${2:?--root needs a value}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a value}; shift 2 ;;
        --with-service) WITH_SERVICE=yes; shift ;;
        --no-enable) ENABLE=no; shift ;;
        --uninstall) UNINSTALL=yes; shift ;;
        --purge) PURGE=yes; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$ROOT" ]; then
    case "$ROOT" in /*) ;; *) die "--root must be an absolute path" ;; esac
    ROOT=${ROOT%/}
fi
[ "$(id -u)" -eq 0 ] || die "run as root (sudo): it creates a system user and installs units"
[ "$PURGE" = no ] || [ "$UNINSTALL" = yes ] || die "--purge goes with --uninstall"

VENV=$ROOT$PREFIX
ETC=$ROOT/etc/defender-agent
UNITS=$ROOT/etc/systemd/system
STATE=$ROOT/var/lib/defender-agent
SERVICE_STATE=$ROOT/var/lib/defender-agent-service
AGENT_UNIT=defender-agent.service
SERVICE_UNIT=defender-agent-service.service

# systemctl only on the live system, and only when systemd runs it
live_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# ----------------------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = yes ]; then
    if live_systemd; then
        for unit in $AGENT_UNIT $SERVICE_UNIT; do
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
    rm -f "$UNITS/$AGENT_UNIT" "$UNITS/$SERVICE_UNIT"
    if live_systemd; then systemctl daemon-reload; fi
    if [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ]; then
        rm -rf "$VENV"
        say "removed $VENV and the units"
    else
        say "no venv in $VENV; removed the units"
    fi
    rm -f "$ROOT/usr/local/bin/defender-agent"
    if [ "$PURGE" = yes ]; then
        rm -rf "$ETC" "$STATE" "$SERVICE_STATE"
        if [ -n "$ROOT" ]; then
            userdel --root "$ROOT" "$USER_NAME" 2>/dev/null || true
            groupdel --root "$ROOT" "$USER_NAME" 2>/dev/null || true
        else
            userdel "$USER_NAME" 2>/dev/null || true
            groupdel "$USER_NAME" 2>/dev/null || true
        fi
        say "purged $ETC, the state directories and the user $USER_NAME"
    else
        say "kept $ETC and the state in $STATE (--purge removes them)"
    fi
    exit 0
fi

# ----------------------------------------------------------------------------- install
if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "$PYTHON is older than 3.9"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PYTHON cannot make a venv: apt-get install python3-venv"
if [ -z "$SPEC" ]; then
    if [ -f "$CHECKOUT/pyproject.toml" ] && grep -q '^name = "defender-agent"' "$CHECKOUT/pyproject.toml"; then
        SPEC=$CHECKOUT
    else
        SPEC=defender-agent
    fi
fi

# the system user and group (idempotent)
if [ -n "$ROOT" ]; then
    if [ -f "$ROOT/etc/passwd" ]; then
        grep -q "^$USER_NAME:" "$ROOT/etc/group" 2>/dev/null \
            || groupadd --root "$ROOT" --system "$USER_NAME"
        grep -q "^$USER_NAME:" "$ROOT/etc/passwd" \
            || useradd --root "$ROOT" --system --gid "$USER_NAME" --no-create-home \
                --home-dir /var/lib/defender-agent --shell /usr/sbin/nologin "$USER_NAME" 2>/dev/null
    else
        say "no $ROOT/etc/passwd: the user $USER_NAME is not created there"
    fi
else
    getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
    id -u "$USER_NAME" >/dev/null 2>&1 \
        || useradd --system --gid "$USER_NAME" --no-create-home \
            --home-dir /var/lib/defender-agent --shell /usr/sbin/nologin "$USER_NAME"
fi

# the venv: made once (again when its Python is gone), then upgraded in place
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    say "made the venv $VENV ($("$VENV/bin/python" -V 2>&1))"
fi
# shellcheck disable=SC2086 # PIP_ARGS is a list of words on purpose
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    $PIP_ARGS "$SPEC"
VERSION=$("$VENV/bin/python" -c 'import defender_agent; print(defender_agent.__version__)')
say "defender-agent $VERSION in $VENV"
mkdir -p "$ROOT/usr/local/bin"
ln -sfn "$PREFIX/bin/defender-agent" "$ROOT/usr/local/bin/defender-agent"

# the configuration: made when missing (then owned by root, group defender-agent, 0640),
# never overwritten nor re-owned; the examples beside it are refreshed
# the group that may read the configuration: the user's (a number under --root, whose
# /etc/group is not this system's), or nothing when the user was not created
config_group() {
    if [ -z "$ROOT" ]; then
        echo "$USER_NAME"
    else
        awk -F: -v u="$USER_NAME" '$1 == u {print $3}' "$ROOT/etc/group" 2>/dev/null || true
    fi
}
GROUP=$(config_group)
if [ ! -d "$ETC" ]; then
    install -d -m 0750 "$ETC"
    [ -z "$GROUP" ] || chgrp "$GROUP" "$ETC"
fi
for name in agent service; do
    example=$CHECKOUT/examples/$name.toml
    [ -f "$example" ] && install -m 0640 "$example" "$ETC/$name.toml.example"
done
if [ ! -e "$ETC/config.toml" ]; then
    cat > "$ETC/config.toml" <<'EOF'
# defender-agent's configuration (every setting: agent.toml.example next to this file).
# Fill in the endpoint, the thing and the files, then check with: defender-agent doctor
[mqtt]
# endpoint = "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"   # aws iot describe-endpoint --endpoint-type iot:Data-ATS
# client_id = "my-thing"
# ca_file = "/etc/defender-agent/AmazonRootCA1.pem"
# cert_file = "/etc/defender-agent/certificate.pem.crt"
# key_file = "/etc/defender-agent/private.pem.key"              # mode 0600, owner defender-agent

[agent]
# thing_name = "my-thing"                                       # default: the client id
interval = 300
EOF
    chmod 0640 "$ETC/config.toml"
    [ -z "$GROUP" ] || chgrp "$GROUP" "$ETC/config.toml"
    say "wrote $ETC/config.toml (fill it in)"
else
    say "kept $ETC/config.toml"
fi
if [ ! -e "$ETC/service.toml" ]; then
    cat > "$ETC/service.toml" <<'EOF'
# The local Device Defender service's configuration (every setting: service.toml.example).
[service]
state_dir = "/var/lib/defender-agent-service"
# broker = "127.0.0.1"
# db = "postgresql://defender@localhost/defender"               # default: SQLite in state_dir
EOF
    chmod 0640 "$ETC/service.toml"
    [ -z "$GROUP" ] || chgrp "$GROUP" "$ETC/service.toml"
fi

# the units (ExecStart follows --prefix)
install -d -m 0755 "$UNITS"
for unit in $AGENT_UNIT $SERVICE_UNIT; do
    sed "s#/opt/defender-agent/bin/defender-agent#$PREFIX/bin/defender-agent#" \
        "$HERE/systemd/$unit" > "$UNITS/$unit.tmp"
    chmod 0644 "$UNITS/$unit.tmp"
    mv -f "$UNITS/$unit.tmp" "$UNITS/$unit"
done
say "units in $UNITS: $AGENT_UNIT, $SERVICE_UNIT"

if live_systemd && [ "$ENABLE" = yes ]; then
    systemctl daemon-reload
    systemctl enable "$AGENT_UNIT" >/dev/null 2>&1
    # an upgrade: restart what runs (the new code), without waiting for READY
    systemctl try-restart --no-block "$AGENT_UNIT"
    if [ "$WITH_SERVICE" = yes ]; then
        systemctl enable "$SERVICE_UNIT" >/dev/null 2>&1
        systemctl try-restart --no-block "$SERVICE_UNIT"
    fi
    say "enabled $AGENT_UNIT; start it with: systemctl start --no-block $AGENT_UNIT"
elif [ -z "$ROOT" ] && [ "$ENABLE" = yes ]; then
    say "systemd is not running here: enable the unit once it is (systemctl enable $AGENT_UNIT)"
fi
say "next: edit $ETC/config.toml, then run: defender-agent doctor --config $ETC/config.toml"
