#!/usr/bin/env bash
# On the Proxmox node, as root, before apply-features.sh: the host directories to be
# bind-mounted into the Sudo container, made and owned by the container's root as the node
# sees it (uid/gid 100000 with Proxmox's default idmap for unprivileged containers).
#
#   proxmox/host-prep.sh [--owner UID:GID] HOST_DIR...
#   proxmox/host-prep.sh /mnt/pve/hdd/sudo-backups
#
# Only each directory given is re-owned, never the disk under it: give a subdirectory of the
# disk, not its mount point, so the container gets that subtree and nothing else. Everything is
# checked before anything changes; a second run changes nothing.
set -euo pipefail

die() {
    echo "host-prep: $*" >&2
    exit 1
}

owner=100000:100000
if [ "${1:-}" = --owner ]; then
    [ $# -ge 2 ] || die "--owner needs UID:GID, e.g. --owner 100000:100000"
    owner=$2
    shift 2
fi
[[ $owner =~ ^[0-9]+:[0-9]+$ ]] || die "--owner must be UID:GID in numbers, e.g. 100000:100000 (got '$owner')"
[ $# -gt 0 ] || die "usage: host-prep.sh [--owner UID:GID] HOST_DIR... (e.g. /mnt/pve/hdd/sudo-backups)"
[ "$(id -u)" = 0 ] || die "run it as root on the Proxmox node (it creates and re-owns directories)"

for dir in "$@"; do
    [[ $dir == /* ]] || die "$dir: give an absolute path, e.g. /mnt/pve/hdd/sudo-backups"
    [[ $dir =~ ^[A-Za-z0-9/._-]+$ ]] || die "$dir: use only letters, digits and / . _ - (pct set cannot take commas or spaces)"
    [ "$dir" != / ] || die "/ cannot be given to a container"
    if [ -e "$dir" ] && [ ! -d "$dir" ]; then
        die "$dir exists and is not a directory: give a directory"
    fi
    if [ -d "$dir" ] && mountpoint -q "$dir"; then
        die "$dir is a mount point (a whole disk): give a subdirectory of it, e.g. $dir/sudo, so the container gets only that"
    fi
    if [ -d "$dir" ] && [ "$(stat -c %u:%g "$dir")" != "$owner" ] && [ -n "$(ls -A "$dir")" ]; then
        die "$dir already holds files and belongs to $(stat -c %U:%G "$dir"): give an empty or new directory, or chown -R $owner it yourself if its files are meant for the container"
    fi
done

for dir in "$@"; do
    if [ -d "$dir" ] && [ "$(stat -c %u:%g "$dir")" = "$owner" ]; then
        echo "$dir: ready, owned by $owner (unchanged)"
        continue
    fi
    mkdir -p "$dir"
    chown "$owner" "$dir"
    chmod 0750 "$dir"
    echo "$dir: made ready, owned by $owner (the container's root)"
done
