# Sudo's boot script: the entrypoint of every family container, run by `/bin/sh -c` on each
# start. It writes what Sudo manages into the data volume, then execs the image's own
# entrypoint ("$@": upstream's entrypoint-dispatch.sh and its s6 handoff, or the test image's
# hermes) with `gateway run`. The image itself is never modified.
#
# Inputs (environment, set by the provisioner): SUDO_CONFIG_YAML, SUDO_IDENTITY, API_SERVER_KEY.
set -eu
home="${HERMES_HOME:-/opt/data}"
umask 077
mkdir -p "$home/memories"

# Replace a file in one step: a crash mid-write never leaves half a file behind, and a
# root-owned file left by an older build is replaced rather than written through.
replace() { cat > "$1.sudo-new" && mv -f "$1.sudo-new" "$1"; }

# 1. config.yaml is Sudo-managed and rewritten on every start (user edits do not survive).
printf '%s\n' "$SUDO_CONFIG_YAML" | replace "$home/config.yaml"

# 2. .env is loaded by Hermes over the environment, so a stale API_SERVER_KEY there would beat
#    ours. Drop every key Sudo manages, keep the family's own, then pin ours.
managed='API_SERVER_[A-Z_]*|OPENAI_API_KEY|OPENAI_BASE_URL|OPENROUTER_API_KEY|ANTHROPIC_API_KEY'
{
    if [ -f "$home/.env" ]; then
        grep -Ev "^[[:space:]]*(export[[:space:]]+)?($managed)=" "$home/.env" || true
    fi
    printf 'API_SERVER_KEY=%s\n' "$API_SERVER_KEY"
} | replace "$home/.env"

# 3. MEMORY.md: the family's identity is the first entry (entries are separated by a line
#    holding only the section sign). Replace our entry; keep every entry the agent wrote.
memory="$home/memories/MEMORY.md"
{
    printf '%s\n\302\247\n' "$SUDO_IDENTITY"
    if [ -f "$memory" ]; then
        awk -v marker="$(printf '%s' "$SUDO_IDENTITY" | head -n 1)" '
            skipping && $0 == "\302\247" { skipping = 0; next }
            skipping { next }
            $0 == marker { skipping = 1; next }
            { print }
        ' "$memory"
    fi
} | replace "$memory"

# 4. Sudo recovers a turn cut off by a restart itself: sudo-api gives the agent every message it
#    got and never answered again, with the same id. Hermes would also replay the interrupted
#    session on its own (and be interrupted by that redelivery), so its previous exit is
#    declared clean, which is what turns its replay off.
: > "$home/.clean_shutdown"

unset SUDO_CONFIG_YAML SUDO_IDENTITY
exec "$@"
