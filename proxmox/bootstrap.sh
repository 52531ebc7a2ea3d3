#!/usr/bin/env bash
# Inside the Sudo container (Debian 12), as root, from a checkout of this repository: from a
# fresh container to a running Sudo host.
#
#   proxmox/bootstrap.sh /root/sudo-bootstrap.conf     (its settings: bootstrap.conf.example)
#
# In order: Docker (docker.io, unless `docker info` already answers), the Sudo packages, the
# Hermes image (pulled unless present, tagged for the provisioner), livekit-server (binary,
# units/livekit-server.service, a config whose key pair is made once), Sudo's LiveKit settings
# and public address, HTTPS (the sudo-web package's Caddy, for sudo-api, Twilio's webhooks and
# LiveKit's signalling, given this file's names and ports), and the administrator. Each step leaves what is already right alone, so a second run changes
# nothing and an upgrade is the same command with newer packages. It stops at the first error
# saying what to do, and prints no secret.
set -Eeuo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
venv=/opt/venvs/sudo
sudoctl=$venv/bin/sudoctl
apt_log=/var/log/sudo-bootstrap-apt.log

die() {
    echo "bootstrap: $*" >&2
    exit 1
}
trap 'die "stopped: \`$BASH_COMMAND\` failed (line $LINENO); fix what it said above, then run bootstrap.sh again"' ERR

changes=0
step() { echo "==> $*"; }
same() { echo "    $* (unchanged)"; }
did() {
    echo "    $*"
    changes=$((changes + 1))
}

# --- Settings: KEY=value lines, read (never executed); an unknown key is an error -------------

[ $# -eq 1 ] || die "usage: bootstrap.sh CONFIG (copy proxmox/bootstrap.conf.example and adjust it)"
conf=$1
[ "$(id -u)" = 0 ] || die "run it as root inside the Sudo container"
[[ -f $conf && -r $conf ]] || die "$conf: no such file: copy proxmox/bootstrap.conf.example there and adjust it"
codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
[ "$codename" = bookworm ] || die "this is not Debian 12 (bookworm): the Sudo packages are built for it"

declare -A cfg=(
    [SUDO_DOMAIN]="" [LIVEKIT_DOMAIN]="" [TLS]=acme [ACME_EMAIL]="" [HTTP_PORT]=80 [HTTPS_PORT]=443
    [SUDO_DEBS]="" [HERMES_IMAGE]=sudo-hermes:0.19.0 [HERMES_TAG]=sudo-hermes-prod:0.19.0
    [LIVEKIT_VERSION]=1.9.1 [LIVEKIT_SHA256]="" [LIVEKIT_BINARY]=""
    [LIVEKIT_PORT]=7880 [LIVEKIT_TCP_PORT]=7881 [LIVEKIT_UDP_PORTS]=50000-60000
    [ADMIN_EMAIL]="" [ADMIN_PASSWORD_FILE]=""
)
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^([A-Z0-9_]+)=(.*)$ ]] || die "$conf line $n: not KEY=value"
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    [[ -v "cfg[$key]" ]] || die "$conf line $n: unknown setting $key (the settings are those of proxmox/bootstrap.conf.example)"
    value=${value%"${value##*[![:space:]]}"}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
        value=${BASH_REMATCH[1]}
    fi
    cfg[$key]=$value
done <"$conf"

need() { [ -n "${cfg[$1]}" ] || die "$conf: set $1 ($2)"; }
port() { [[ ${cfg[$1]} =~ ^[1-9][0-9]{0,4}$ && ${cfg[$1]} -le 65535 ]] || die "$conf: $1 must be a port number (got '${cfg[$1]}')"; }
host_re='^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]*[a-z0-9])?$'
for key in SUDO_DOMAIN LIVEKIT_DOMAIN; do
    need "$key" "a DNS name of this host, such as sudo.example.org"
    [[ ${cfg[$key]} =~ $host_re ]] || die "$conf: $key must be a lowercase DNS name such as sudo.example.org (got '${cfg[$key]}')"
done
[ "${cfg[SUDO_DOMAIN]}" != "${cfg[LIVEKIT_DOMAIN]}" ] || die "$conf: LIVEKIT_DOMAIN needs a name of its own (LiveKit's signalling is served apart from the website)"
[[ ${cfg[TLS]} =~ ^(acme|internal)$ ]] || die "$conf: TLS must be acme or internal (got '${cfg[TLS]}')"
for key in HTTP_PORT HTTPS_PORT LIVEKIT_PORT LIVEKIT_TCP_PORT; do port "$key"; done
[[ ${cfg[LIVEKIT_UDP_PORTS]} =~ ^([0-9]{4,5})-([0-9]{4,5})$ && ${BASH_REMATCH[1]} -lt ${BASH_REMATCH[2]} ]] \
    || die "$conf: LIVEKIT_UDP_PORTS must be a range such as 50000-60000 (got '${cfg[LIVEKIT_UDP_PORTS]}')"
udp_start=${BASH_REMATCH[1]}
udp_end=${BASH_REMATCH[2]}
need HERMES_IMAGE "the Hermes Agent image to run, e.g. sudo-hermes:0.19.0 (make hermes-image)"
[[ ${cfg[HERMES_TAG]} =~ ^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_.-]+$ ]] || die "$conf: HERMES_TAG must be NAME:TAG, such as sudo-hermes-upstream:0.19.0"
if [ -n "${cfg[SUDO_DEBS]}" ]; then
    [[ ${cfg[SUDO_DEBS]} == /* ]] || die "$conf: SUDO_DEBS must be an absolute path"
    for pkg in sudo-server sudo-web sudo-voice-bridge; do
        compgen -G "${cfg[SUDO_DEBS]}/${pkg}_*.deb" >/dev/null \
            || die "$conf: SUDO_DEBS=${cfg[SUDO_DEBS]} holds no ${pkg}_*.deb: copy the .debs of \`make deb\` (dist/*.deb) there"
    done
fi
if [ -n "${cfg[LIVEKIT_BINARY]}" ]; then
    [[ -f ${cfg[LIVEKIT_BINARY]} && -x ${cfg[LIVEKIT_BINARY]} ]] \
        || die "$conf: LIVEKIT_BINARY=${cfg[LIVEKIT_BINARY]} is not an executable file"
else
    [[ ${cfg[LIVEKIT_VERSION]} =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$conf: LIVEKIT_VERSION must be a release such as 1.9.1"
    [[ ${cfg[LIVEKIT_SHA256]} =~ ^[0-9a-f]{64}$ ]] \
        || die "$conf: set LIVEKIT_SHA256 to the sha256 of livekit_${cfg[LIVEKIT_VERSION]}_linux_$(dpkg --print-architecture).tar.gz, from the checksums file of https://github.com/livekit/livekit/releases/tag/v${cfg[LIVEKIT_VERSION]} (or set LIVEKIT_BINARY)"
fi
if [ -n "${cfg[LIVEKIT_SHA256]}" ]; then
    [[ ${cfg[LIVEKIT_SHA256]} =~ ^[0-9a-f]{64}$ ]] || die "$conf: LIVEKIT_SHA256 must be 64 lowercase hex digits"
fi
need ADMIN_EMAIL "the administrator's email, e.g. you@example.org"
[[ ${cfg[ADMIN_EMAIL]} =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] || die "$conf: ADMIN_EMAIL must be an email address"
if [ -n "${cfg[ADMIN_PASSWORD_FILE]}" ]; then
    pw=${cfg[ADMIN_PASSWORD_FILE]}
    [ -f "$pw" ] || die "$conf: ADMIN_PASSWORD_FILE=$pw does not exist (or leave it empty to have a password generated)"
    [[ $(stat -c '%U %a' "$pw") =~ ^root\ [0-7]00$ ]] || die "$pw must belong to root and be readable by root only: chown root $pw && chmod 600 $pw"
fi
[ -f "$repo/units/livekit-server.service" ] \
    || die "$repo/units/livekit-server.service is missing: run bootstrap.sh from a whole checkout of the repository"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -q >>"$apt_log" 2>&1 \
            || { tail -n 20 "$apt_log" >&2; die "apt-get update failed (above, all of it in $apt_log): check the container's network and /etc/apt/sources.list"; }
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "$@" >>"$apt_log" 2>&1 \
        || { tail -n 20 "$apt_log" >&2; die "apt-get install $* failed (above, all of it in $apt_log)"; }
}

# put MODE SRC DEST: install SRC as DEST (root's, MODE) unless it is already that; whether it was not.
put() {
    local mode=$1 src=$2 dest=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c '%a %U' "$dest")" = "${mode#0} root" ]; then
        return 1
    fi
    install -D -o root -g root -m "$mode" "$src" "$dest"
}

wait_active() {
    for _ in $(seq 60); do
        systemctl is-active --quiet "$1" && return 0
        sleep 1
    done
    die "$1 is not running: \`journalctl -u $1\` says why"
}

# The public URL of a name: the HTTPS port only when it is not 443.
public() {
    local suffix=""
    [ "${cfg[HTTPS_PORT]}" = 443 ] || suffix=":${cfg[HTTPS_PORT]}"
    echo "$1://$2$suffix"
}

# --- Docker ----------------------------------------------------------------------------------

step "Docker"
if docker info >/dev/null 2>&1; then
    same "docker info answers: Docker left as it is"
else
    if ! installed docker.io; then
        apt_install docker.io
        did "installed docker.io"
    fi
    systemctl enable --now docker.service >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 \
        || die "Docker does not start (\`journalctl -u docker\` says why). In an LXC it needs nesting=1,keyctl=1: on the node, run proxmox/apply-features.sh VMID"
    did "Docker started"
fi

# --- The Sudo packages -----------------------------------------------------------------------

step "Sudo packages"
if [ -n "${cfg[SUDO_DEBS]}" ]; then
    debs=()
    stale=()
    declare -A seen=()
    for deb in "${cfg[SUDO_DEBS]}"/sudo-*.deb; do
        pkg=$(dpkg-deb -f "$deb" Package)
        version=$(dpkg-deb -f "$deb" Version)
        [ "$pkg" != sudo-edge ] || continue # the home device's package, not the server's
        [ -z "${seen[$pkg]:-}" ] || die "${cfg[SUDO_DEBS]} holds $pkg twice (${seen[$pkg]} and $version): keep only one version there"
        seen[$pkg]=$version
        debs+=("$deb")
        if [ "$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)" != "install ok installed $version" ]; then
            stale+=("$pkg=$version")
        fi
    done
fi
# sudo-web's settings first: its package starts Caddy at once, on these names and ports. They
# are the environment of its unit, which wins over [web] in /etc/sudo/sudo.toml.
web_env=(
    "SUDO_WEB_DOMAIN=${cfg[SUDO_DOMAIN]}" "SUDO_WEB_TLS=${cfg[TLS]}" "SUDO_WEB_ACME_EMAIL=${cfg[ACME_EMAIL]}"
    "SUDO_WEB_HTTP_PORT=${cfg[HTTP_PORT]}" "SUDO_WEB_HTTPS_PORT=${cfg[HTTPS_PORT]}"
    "SUDO_WEB_LIVEKIT_DOMAIN=${cfg[LIVEKIT_DOMAIN]}" "SUDO_WEB_LIVEKIT_UPSTREAM=127.0.0.1:${cfg[LIVEKIT_PORT]}"
)
{
    echo "# Written by proxmox/bootstrap.sh from its settings: run it again rather than editing."
    echo "# sudo-web's [web] settings; these win over /etc/sudo/sudo.toml."
    echo "[Service]"
    printf 'Environment=%s\n' "${web_env[@]}"
} >"$work/sudo-web.conf"
web_changed=""
if put 0644 "$work/sudo-web.conf" /etc/systemd/system/sudo-web.service.d/bootstrap.conf; then
    systemctl daemon-reload
    web_changed=1
    did "sudo-web set for ${cfg[SUDO_DOMAIN]} and ${cfg[LIVEKIT_DOMAIN]} (TLS ${cfg[TLS]})"
fi
if [ -n "${cfg[SUDO_DEBS]}" ]; then
    if [ ${#stale[@]} -eq 0 ]; then
        same "${#debs[@]} packages at the versions in ${cfg[SUDO_DEBS]}"
    else
        apt_install "${debs[@]}"
        did "installed ${stale[*]}"
    fi
elif installed sudo-server && installed sudo-web && installed sudo-voice-bridge; then
    same "sudo-server $(dpkg-query -W -f='${Version}' sudo-server) installed"
else
    apt_install sudo-server sudo-web sudo-voice-bridge
    did "installed sudo-server, sudo-web and sudo-voice-bridge from the configured repository"
fi
wait_active sudo-api.service

# --- The Hermes image ------------------------------------------------------------------------

step "Hermes image"
image=${cfg[HERMES_IMAGE]}
tag=${cfg[HERMES_TAG]}
if ! id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null); then
    docker pull -q "$image" >/dev/null \
        || die "cannot pull $image: check the container's internet access, or \`docker load\` the image here and run again"
    id=$(docker image inspect -f '{{.Id}}' "$image")
    did "pulled $image"
fi
if [ "$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)" = "$id" ]; then
    same "$tag is $image"
else
    docker tag "$image" "$tag"
    did "tagged $image as $tag"
fi
{
    echo "# Written by proxmox/bootstrap.sh (HERMES_TAG): run it again rather than editing."
    echo "# Only the provisioner reads the runtime settings; these win over /etc/sudo/sudo.toml."
    echo "[Service]"
    echo "Environment=SUDO_RUNTIME_IMAGE=$tag"
} >"$work/hermes-image.conf"
if put 0644 "$work/hermes-image.conf" /etc/systemd/system/sudo-provisioner.service.d/hermes-image.conf; then
    systemctl daemon-reload
    systemctl try-restart sudo-provisioner.service
    did "the provisioner runs $tag (running families move to it on \`sudoctl restart-all\`)"
else
    same "the provisioner runs $tag"
fi

# --- livekit-server --------------------------------------------------------------------------

step "livekit-server"
restart_livekit=""
bin=/usr/local/bin/livekit-server
if [ -n "${cfg[LIVEKIT_BINARY]}" ]; then
    src=${cfg[LIVEKIT_BINARY]}
    if [ -n "${cfg[LIVEKIT_SHA256]}" ]; then
        echo "${cfg[LIVEKIT_SHA256]}  $src" | sha256sum -c --quiet - >/dev/null 2>&1 \
            || die "$src does not have the sha256 LIVEKIT_SHA256: check both (nothing was installed)"
    fi
    if put 0755 "$src" "$bin"; then
        restart_livekit=1
        did "installed $bin from $src"
    else
        same "$bin is $src"
    fi
else
    version=${cfg[LIVEKIT_VERSION]}
    if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null || true)" = "livekit-server version $version" ]; then
        same "livekit-server $version installed"
    else
        installed curl || apt_install curl ca-certificates
        url=https://github.com/livekit/livekit/releases/download/v$version/livekit_${version}_linux_$(dpkg --print-architecture).tar.gz
        curl -fsSL --retry 3 -o "$work/livekit.tar.gz" "$url" \
            || die "cannot download $url: check the container's internet access, or copy a livekit-server here and set LIVEKIT_BINARY"
        echo "${cfg[LIVEKIT_SHA256]}  $work/livekit.tar.gz" | sha256sum -c --quiet - >/dev/null 2>&1 \
            || die "$url does not have the sha256 LIVEKIT_SHA256: compare it with the release's checksums file (nothing was installed)"
        tar -xzf "$work/livekit.tar.gz" -C "$work" livekit-server || die "$url holds no livekit-server"
        put 0755 "$work/livekit-server" "$bin" || true
        restart_livekit=1
        did "installed livekit-server $version"
    fi
fi

livekit_conf=/etc/livekit/livekit.yaml
if [ -e "$livekit_conf" ]; then
    same "$livekit_conf kept as it is (its keys are never replaced)"
else
    key=API$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    install -d -m 0755 /etc/livekit
    (
        umask 077
        cat >"$livekit_conf.new" <<EOF
# Written once by proxmox/bootstrap.sh, never rewritten: edit it freely. Its key pair is also in
# Sudo's admin settings (livekit.api_key, livekit.api_secret): change both together.
port: ${cfg[LIVEKIT_PORT]}
rtc:
  tcp_port: ${cfg[LIVEKIT_TCP_PORT]}
  port_range_start: $udp_start
  port_range_end: $udp_end
  use_external_ip: true
keys:
  $key: $secret
EOF
    )
    mv "$livekit_conf.new" "$livekit_conf"
    restart_livekit=1
    did "wrote $livekit_conf with a new key pair (root only)"
fi
# The key pair as the file has it now: the first entry under keys:.
keyline=$(awk '/^keys:/ { k = 1; next } k && /^[^[:space:]#]/ { exit } k && /^[[:space:]]+[^[:space:]#]/ { print; exit }' "$livekit_conf")
[[ $keyline =~ ^[[:space:]]+([A-Za-z0-9_-]+):[[:space:]]*\"?([^\"[:space:]]+)\"?[[:space:]]*$ ]] \
    || die "$livekit_conf has no key under keys: (a line '  APIkey: secret'): fix it, or move it away to have a new one made"
livekit_key=${BASH_REMATCH[1]}
livekit_secret=${BASH_REMATCH[2]}

if put 0644 "$repo/units/livekit-server.service" /etc/systemd/system/livekit-server.service; then
    systemctl daemon-reload
    restart_livekit=1
    did "installed livekit-server.service"
fi
if ! systemctl is-enabled --quiet livekit-server.service; then
    systemctl enable livekit-server.service >/dev/null 2>&1
    did "enabled livekit-server.service"
fi
if [ -n "$restart_livekit" ] || ! systemctl is-active --quiet livekit-server.service; then
    systemctl restart livekit-server.service
    sleep 2
    systemctl is-active --quiet livekit-server.service \
        || die "livekit-server does not stay up: \`journalctl -u livekit-server\` says why"
    did "livekit-server (re)started"
else
    same "livekit-server running"
fi

# --- Sudo's settings: where LiveKit is, with its key pair, and this host's public address ----

step "Sudo's settings"
setting() {
    local key=$1 out
    out=$(printf '%s\n' "$2" | (umask 007 && "$sudoctl" settings set "$key")) \
        || die "sudoctl settings set $key failed (above)"
    case "$out" in
        "$key changed"*) did "$key set" ;;
        "$key unchanged"*) same "$key" ;;
        *) die "sudoctl settings set $key answered something unexpected: is sudo-core up to date?" ;;
    esac
}
setting livekit.url "$(public wss "${cfg[LIVEKIT_DOMAIN]}")"
setting livekit.api_key "$livekit_key"
setting livekit.api_secret "$livekit_secret"
setting twilio.public_url "$(public https "${cfg[SUDO_DOMAIN]}")"

# --- HTTPS: sudo-web ---------------------------------------------------------------------------

step "HTTPS (sudo-web)"
# The Caddyfile sudo-web renders with these settings: sudoctl says what in them is wrong.
env "${web_env[@]}" "$sudoctl" web caddyfile >"$work/Caddyfile" \
    || die "sudo-web cannot serve these settings (above): fix them in $conf or /etc/sudo/sudo.toml"
if [ -n "$web_changed" ] || ! systemctl is-active --quiet sudo-web.service; then
    systemctl restart sudo-web.service \
        || die "sudo-web (Caddy) does not start: \`journalctl -u sudo-web\` says why"
    did "sudo-web serves $(public https "${cfg[SUDO_DOMAIN]}") and $(public wss "${cfg[LIVEKIT_DOMAIN]}")"
else
    same "sudo-web serves $(public https "${cfg[SUDO_DOMAIN]}") and $(public wss "${cfg[LIVEKIT_DOMAIN]}")"
fi
wait_active sudo-web.service

# --- The administrator -----------------------------------------------------------------------

step "Administrator"
email=${cfg[ADMIN_EMAIL]}
admins=$("$sudoctl" admins)
if grep -qxF "$email" <<<"$admins"; then
    same "admin $email exists: left alone"
else
    password_file=${cfg[ADMIN_PASSWORD_FILE]:-/root/sudo-admin-password}
    if [ ! -s "$password_file" ]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$password_file")
    fi
    (umask 007 && "$sudoctl" create-admin --email "$email" --password-stdin <"$password_file" >/dev/null) \
        || die "sudoctl create-admin failed (above): fix ADMIN_EMAIL or the password in $password_file"
    did "created admin $email; the password is in $password_file (root only): log in at $(public https "${cfg[SUDO_DOMAIN]}")/login"
fi

if [ "$changes" -eq 0 ]; then
    echo "bootstrap: done, nothing changed"
else
    echo "bootstrap: done, $changes change(s); next, the checks in proxmox/README.md (Verify)"
fi
