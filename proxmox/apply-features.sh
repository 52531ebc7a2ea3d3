#!/usr/bin/env bash
# On the Proxmox node, as root, after `terraform apply`: what an API token may not set on the
# Sudo container. Only root@pam may (Proxmox refuses both to tokens).
#
#   proxmox/apply-features.sh VMID [HOST_DIR:CONTAINER_PATH ...]
#   proxmox/apply-features.sh 118 /mnt/pve/hdd/sudo-backups:/srv/backups
#
# - features nesting=1 (systemd's sandboxing of the Sudo units needs namespaces) and keyctl=1
#   (Docker in an unprivileged container needs it); features already set are kept;
# - one bind mount (mpN) per HOST_DIR:CONTAINER_PATH, HOST_DIR prepared by host-prep.sh.
# Then the container is rebooted once so they apply. What is already set is left alone: a
# second run sets nothing and does not reboot. Everything is checked before anything changes.
set -euo pipefail

die() {
    echo "apply-features: $*" >&2
    exit 1
}

[ $# -ge 1 ] || die "usage: apply-features.sh VMID [HOST_DIR:CONTAINER_PATH ...] (VMID: terraform output vmid)"
vmid=$1
shift
[[ $vmid =~ ^[1-9][0-9]{2,8}$ ]] || die "VMID must be a number from 100 up, such as 118 (got '$vmid')"
[ "$(id -u)" = 0 ] || die "run it as root on the Proxmox node's shell: only root@pam may set features and bind mounts"
command -v pct >/dev/null || die "pct not found: run this on the Proxmox node's shell, not in the container or on a workstation"

if ! config=$(pct config "$vmid" 2>&1); then
    die "no container $vmid on this node ($(head -n 1 <<<"$config")): check \`pct list\` and \`terraform output vmid\`"
fi
grep -qx 'unprivileged: 1' <<<"$config" \
    || die "container $vmid is privileged: Sudo's host is meant to be an unprivileged container (create it with proxmox/terraform)"

# Features: nesting=1 and keyctl=1 added to those set; nothing else touched.
current=$(sed -n 's/^features: //p' <<<"$config")
features=()
for item in ${current//,/ }; do
    case "$item" in
        nesting=* | keyctl=*) ;;
        *) features+=("$item") ;;
    esac
done
features+=(nesting=1 keyctl=1)
args=()
if ! grep -Eq '(^|,)nesting=1(,|$)' <<<"$current" || ! grep -Eq '(^|,)keyctl=1(,|$)' <<<"$current"; then
    args+=(--features "$(IFS=,; echo "${features[*]}")")
fi

# Bind mounts: each one not yet there goes to the lowest free mpN.
used=$(sed -n 's/^mp\([0-9]\{1,3\}\): .*/\1/p' <<<"$config")
mounts=()
for spec in "$@"; do
    [[ $spec == *:* ]] || die "$spec: give HOST_DIR:CONTAINER_PATH, e.g. /mnt/pve/hdd/sudo-backups:/srv/backups"
    host=${spec%%:*}
    path=${spec#*:}
    for p in "$host" "$path"; do
        [[ $p =~ ^/[A-Za-z0-9/._-]*$ ]] \
            || die "$spec: both paths must be absolute, of letters, digits and / . _ - only (got '$p')"
    done
    [ -d "$host" ] || die "$host does not exist on this node: run proxmox/host-prep.sh $host first"
    [ "$(stat -c %u "$host")" != 0 ] \
        || die "$host belongs to the node's root, which the container cannot write as: run proxmox/host-prep.sh $host first"
    host_re=${host//./\\.}
    path_re=${path//./\\.}
    existing=$(grep -E "^mp[0-9]+: .*,mp=$path_re(,|$)" <<<"$config" || true)
    if [ -n "$existing" ]; then
        [[ $existing == *": $host,"* ]] \
            || die "$path is already mounted from elsewhere (${existing%%,*}): remove that mount point (pct set $vmid --delete ${existing%%:*}) or choose another path"
        continue
    fi
    if grep -Eq "^mp[0-9]+: $host_re," <<<"$config"; then
        die "$host is already mounted at another path in container $vmid: choose one path for it"
    fi
    for n in $(seq 0 255); do
        if ! grep -qx "$n" <<<"$used"; then
            used=$(printf '%s\n%s' "$used" "$n")
            mounts+=("mp$n:$host,mp=$path")
            args+=("--mp$n" "$host,mp=$path")
            break
        fi
    done
done

if [ ${#args[@]} -eq 0 ]; then
    echo "container $vmid: features and bind mounts already set (unchanged)"
    exit 0
fi

pct set "$vmid" "${args[@]}"
config=$(pct config "$vmid")
for flag in nesting=1 keyctl=1; do
    grep -Eq "^features: (.*,)?$flag(,|$)" <<<"$config" \
        || die "pct set ran but container $vmid still lacks $flag: see \`pct config $vmid\`"
done
for mount in "${mounts[@]}"; do
    grep -qx "${mount/:/: }" <<<"$config" \
        || die "pct set ran but container $vmid lacks ${mount%%:*}: see \`pct config $vmid\`"
done
echo "container $vmid: set ${args[*]}"

if [ "$(pct status "$vmid")" = "status: running" ]; then
    echo "container $vmid: rebooting so that they apply"
    pct reboot "$vmid"
else
    echo "container $vmid is not running: they apply when it starts (pct start $vmid)"
fi
