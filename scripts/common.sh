# shellcheck shell=bash
# Shared helpers for the guest/QEMU test scripts in this directory.
# Sourced, never executed. Everything heavy lives under $VIRTIO_IOMMU_CACHE
# (default ~/.cache/virtio-iommu); nothing is written into the repository.

VIRTIO_IOMMU_CACHE=${VIRTIO_IOMMU_CACHE:-$HOME/.cache/virtio-iommu}
export VIRTIO_IOMMU_CACHE

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Serialise concurrent runs of the same script on a lock file in the cache.
# usage: with_lock NAME   (holds the lock until the calling script exits)
with_lock() {
    mkdir -p "$VIRTIO_IOMMU_CACHE"
    exec {__lock_fd}>"$VIRTIO_IOMMU_CACHE/.$1.lock"
    flock "$__lock_fd"
}

# Install Debian packages that are not installed yet (quietly; log to stderr).
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local lt=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -qq "${lt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
        log "install failed; running apt-get update and retrying"
        apt-get -qq "${lt[@]}" update >&2
        apt-get -qq "${lt[@]}" install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

# A private apt configuration (own sources.list, lists and caches under the
# cache dir) so the system's apt sources are never touched. Exposes the array
# PAPT_OPTS for use as: apt-get "${PAPT_OPTS[@]}" ...
PAPT_DIR=$VIRTIO_IOMMU_CACHE/apt
PAPT_OPTS=(
    -o "Dir::Etc::sourcelist=$PAPT_DIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$PAPT_DIR/lists"
    -o "Dir::Cache=$PAPT_DIR/cache"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
    -o "Acquire::Retries=3"
)

# Refresh the private apt lists if they are missing or older than a day.
papt_update() {
    local kr=/usr/share/keyrings/debian-archive-keyring.gpg
    local want
    want="deb-src [signed-by=$kr] http://deb.debian.org/debian sid main
deb-src [signed-by=$kr] http://deb.debian.org/debian trixie main
deb [arch=amd64 signed-by=$kr] http://deb.debian.org/debian bookworm-backports main
deb [arch=amd64 signed-by=$kr] http://deb.debian.org/debian bookworm main"
    mkdir -p "$PAPT_DIR/lists/partial" "$PAPT_DIR/cache/archives/partial"
    if [ ! -f "$PAPT_DIR/sources.list" ] || [ "$(cat "$PAPT_DIR/sources.list")" != "$want" ]; then
        printf '%s\n' "$want" >"$PAPT_DIR/sources.list"
        rm -f "$PAPT_DIR/.updated"
    fi
    if [ -z "$(find "$PAPT_DIR/.updated" -mmin -1440 2>/dev/null)" ]; then
        log "updating private apt lists in $PAPT_DIR"
        apt-get -qq "${PAPT_OPTS[@]}" update >&2
        touch "$PAPT_DIR/.updated"
    fi
}
