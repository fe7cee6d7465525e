# shellcheck shell=bash
# Shared helpers of every script in this directory: logging, locks, Debian packages (system and
# a private apt configuration) and the static busybox the test guests run.
# Sourced, never executed. Everything heavy lives under $VIRTIO_IOMMU_CACHE
# (default ~/.cache/virtio-iommu); nothing is written into the repository.

VIRTIO_IOMMU_CACHE=${VIRTIO_IOMMU_CACHE:-$HOME/.cache/virtio-iommu}
export VIRTIO_IOMMU_CACHE

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Serialise concurrent runs on a lock file in the cache.
# usage: with_lock NAME   (holds the lock until the calling script exits)
with_lock() {
    mkdir -p "$VIRTIO_IOMMU_CACHE"
    exec {__lock_fd}>"$VIRTIO_IOMMU_CACHE/.$1.lock"
    if ! flock -n "$__lock_fd"; then
        log "waiting for $VIRTIO_IOMMU_CACHE/.$1.lock (another run holds it)"
        flock "$__lock_fd"
    fi
}

# Install Debian packages that are not installed yet (log to stderr). Retried: another
# process's apt run may delete downloaded .debs under our feet (Docker's clean hook), and an
# image without package lists needs an `apt-get update` first.
apt_ensure() {
    local missing=() p i
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local lt=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    export DEBIAN_FRONTEND=noninteractive
    for i in 1 2 3; do
        apt-get -qq "${lt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 && return 0
        log "apt-get install failed (attempt $i); running apt-get update and retrying"
        apt-get -qq "${lt[@]}" update >&2 || true
        sleep 2
    done
    die "could not install ${missing[*]}"
}

# A private apt configuration (own sources.list, lists and caches under the cache dir, the
# system's update hooks cleared) so the system's apt state is never touched. Exposes the
# array PAPT_OPTS for use as: apt-get "${PAPT_OPTS[@]}" ... (after papt_update).
PAPT_DIR=$VIRTIO_IOMMU_CACHE/apt
PAPT_OPTS=(
    -c "$PAPT_DIR/apt.conf"
    -o "Dir::Etc::sourcelist=$PAPT_DIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$PAPT_DIR/lists"
    -o "Dir::Cache=$PAPT_DIR/cache"
    -o "Acquire::Retries=3"
)

# Writes the private configuration and refreshes its lists if they are missing or older than
# a day. A failed refresh is fatal only when there are no lists yet.
papt_update() {
    local kr=/usr/share/keyrings/debian-archive-keyring.gpg
    local want
    want="deb-src [signed-by=$kr] http://deb.debian.org/debian sid main
deb-src [signed-by=$kr] http://deb.debian.org/debian trixie main
deb [arch=amd64 signed-by=$kr] http://deb.debian.org/debian bookworm-backports main
deb [arch=amd64 signed-by=$kr] http://deb.debian.org/debian bookworm main"
    mkdir -p "$PAPT_DIR/lists/partial" "$PAPT_DIR/cache/archives/partial"
    # The system's update hooks act on the system's caches (one deletes every downloaded .deb).
    cat >"$PAPT_DIR/apt.conf" <<'CONF'
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
CONF
    if [ ! -f "$PAPT_DIR/sources.list" ] || [ "$(cat "$PAPT_DIR/sources.list")" != "$want" ]; then
        printf '%s\n' "$want" >"$PAPT_DIR/sources.list"
        rm -f "$PAPT_DIR/.updated"
    fi
    if [ -z "$(find "$PAPT_DIR/.updated" -mmin -1440 2>/dev/null)" ]; then
        log "updating private apt lists in $PAPT_DIR"
        if apt-get -qq "${PAPT_OPTS[@]}" update >&2; then
            touch "$PAPT_DIR/.updated"
        elif [ -f "$PAPT_DIR/.updated" ]; then
            log "warning: private apt-get update failed; using the lists of $(date -r "$PAPT_DIR/.updated")"
        else
            die "private apt-get update failed"
        fi
    fi
}

# busybox_static: prints the path of a static busybox (Debian busybox-static), fetched once
# into the cache.
busybox_static() {
    local dir=$VIRTIO_IOMMU_CACHE/busybox-static
    local bb=$dir/bin/busybox
    if [ ! -x "$bb" ]; then
        with_lock busybox-static
    fi
    if [ ! -x "$bb" ]; then
        papt_update
        log "downloading busybox-static"
        local tmp
        tmp=$(mktemp -d "$VIRTIO_IOMMU_CACHE/.busybox.XXXXXX")
        (cd "$tmp" && apt-get -qq "${PAPT_OPTS[@]}" download busybox-static >&2) \
            || { rm -rf "$tmp"; die "could not download busybox-static"; }
        dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/root"
        [ -x "$tmp/root/bin/busybox" ] || { rm -rf "$tmp"; die "busybox-static has no bin/busybox"; }
        rm -rf "$dir"
        mv "$tmp/root" "$dir"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$bb"
}
