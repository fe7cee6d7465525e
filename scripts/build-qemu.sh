#!/usr/bin/env bash
# Build QEMU 10.2.2 (x86_64-softmmu, TCG + vhost-user) from Debian's source
# package, with the project's patch series qemu/patches/*.patch applied (the
# vhost-user-iommu-pci device), and cache it under ~/.cache/virtio-iommu/qemu-10.2.2/:
#   src/    the unpacked source, never modified
#   tree/   a copy of src/ with the patches applied (redone when the patches change)
#   build/  the build directory (kept across patch changes: only what they touch is rebuilt)
# Idempotent: a cached, verified build is reused instantly.
# Prints the path of the qemu-system-x86_64 binary on stdout; logs go to stderr.
# --cached: only print it if a verified build is cached (exit 1 otherwise); never build.
# Env: VIRTIO_IOMMU_CACHE (cache root), QEMU_BUILD_JOBS (default: nproc).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

QEMU_VERSION=10.2.2
QEMU_DEB_VERSION=1:10.2.2+ds-1
MESON_VERSION=1.9.0
PYCOTAP_VERSION=1.3.1   # also required by QEMU's configure (mkvenv), missing from +ds
QDIR=$VIRTIO_IOMMU_CACHE/qemu-$QEMU_VERSION
SRC=$QDIR/src
TREE=$QDIR/tree
BUILD=$QDIR/build
BIN=$QDIR/bin/qemu-system-x86_64
STAMP=$QDIR/.built
PATCH_DIR=$(cd "$HERE/../qemu/patches" && pwd)
PATCHES=()
for p in "$PATCH_DIR"/*.patch; do [ -f "$p" ] && PATCHES+=("$p"); done
PATCH_HASH=$(cat "${PATCHES[@]}" </dev/null | sha256sum | cut -c1-16)
CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu
    --without-default-features
    --enable-vhost-user
    --enable-tcg
    --enable-fdt=system
    --disable-docs
    --disable-install-blobs
)
# Devices later tests rely on; the build is only accepted if all are present.
REQUIRED_DEVICES=(vhost-user-test-device-pci vhost-user-iommu-pci virtio-iommu-pci intel-iommu
                  edu e1000e virtio-net-pci virtio-blk-pci isa-debug-exit)
# The build directory is configured once per version and flags; patches only rebuild.
CONFIG_STAMP="qemu=$QEMU_DEB_VERSION meson=$MESON_VERSION flags=${CONFIGURE_FLAGS[*]}"
STAMP_CONTENT="$CONFIG_STAMP devices=${REQUIRED_DEVICES[*]} patches=$PATCH_HASH"
QEMU_DATA_OPTS=(-L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu)

# Fast path: nothing to do.
if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ]; then
    echo "$BIN"
    exit 0
fi
[ "${1:-}" = --cached ] && exit 1

with_lock qemu-build
# Another run may have finished the build while we waited for the lock.
if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ]; then
    echo "$BIN"
    exit 0
fi

apt_ensure build-essential pkg-config ninja-build device-tree-compiler \
    libglib2.0-dev libpixman-1-dev libfdt-dev python3-venv xz-utils \
    seabios qemu-system-data ipxe-qemu

# meson from PyPI in a private venv (Debian 12's meson is too old).
VENV=$VIRTIO_IOMMU_CACHE/venv-meson-$MESON_VERSION
if ! "$VENV/bin/meson" --version 2>/dev/null | grep -qx "$MESON_VERSION" \
    || ! "$VENV/bin/python3" -c 'import pycotap' 2>/dev/null; then
    log "creating meson $MESON_VERSION venv in $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "meson==$MESON_VERSION" "pycotap==$PYCOTAP_VERSION" >&2
fi

# Source: Debian's qemu source package, fetched through a private apt config.
DL=$QDIR/download
if [ ! -f "$SRC/.unpacked" ]; then
    mkdir -p "$DL"
    if ! ls "$DL"/qemu_*.orig.tar.xz >/dev/null 2>&1; then
        papt_update
        log "downloading qemu=$QEMU_DEB_VERSION source"
        (cd "$DL" && apt-get -qq "${PAPT_OPTS[@]}" source --download-only "qemu=$QEMU_DEB_VERSION" >&2)
    fi
    log "unpacking QEMU source"
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xJf "$DL"/qemu_*.orig.tar.xz -C "$SRC.tmp" --strip-components=1
    mv "$SRC.tmp" "$SRC"
    touch "$SRC/.unpacked"
fi

# The patched tree: a copy of the source (tar keeps the files' dates, so only what the
# patches touch looks new to ninja), the patches applied in order. Files touched by the
# previous series are dated now as well, so a patch that changed or went away rebuilds them.
files_of() { sed -n -E 's#^(\+\+\+ b|--- a)/([^[:space:]]+).*#\2#p' "$@" </dev/null | sort -u; }
if [ ! -f "$TREE/.patches" ] || [ "$(cat "$TREE/.patches")" != "$PATCH_HASH" ]; then
    log "preparing the patched tree ($((${#PATCHES[@]})) patches from $PATCH_DIR)"
    rm -rf "$TREE.tmp"
    mkdir -p "$TREE.tmp"
    tar -C "$SRC" --exclude=./build --exclude=./.unpacked -cf - . | tar -C "$TREE.tmp" -xf -
    # The +ds tarball ships no EDK2 firmware blobs: never try to unpack them.
    sed -i -E 's/^([[:space:]]*)unpack_edk2_blobs = .*/\1unpack_edk2_blobs = false/' "$TREE.tmp/meson.build"
    ! grep -Eq 'unpack_edk2_blobs = [^f]' "$TREE.tmp/meson.build" \
        || die "could not patch unpack_edk2_blobs in meson.build"
    for p in "${PATCHES[@]}"; do
        patch -d "$TREE.tmp" -p1 -s -N --no-backup-if-mismatch <"$p" >&2 \
            || die "patch ${p##*/} does not apply to QEMU $QEMU_VERSION"
    done
    touched=$( { cat "$QDIR/.patched-files" 2>/dev/null || true; files_of "${PATCHES[@]}"; } | sort -u)
    rm -rf "$TREE"
    mv "$TREE.tmp" "$TREE"
    while read -r f; do
        [ -n "$f" ] && [ -e "$TREE/$f" ] && touch "$TREE/$f"
    done <<<"$touched"
    files_of "${PATCHES[@]}" >"$QDIR/.patched-files"
    echo "$PATCH_HASH" >"$TREE/.patches"
fi

if [ ! -f "$BUILD/.configured" ] || [ "$(cat "$BUILD/.configured")" != "$CONFIG_STAMP" ]; then
    log "configuring QEMU: ${CONFIGURE_FLAGS[*]}"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    (cd "$BUILD" && PATH="$VENV/bin:$PATH" "$TREE/configure" --python="$VENV/bin/python3" \
        "${CONFIGURE_FLAGS[@]}" >"$BUILD/configure.log" 2>&1) \
        || { tail -n 40 "$BUILD/configure.log" >&2; die "configure failed (see $BUILD/configure.log)"; }
    echo "$CONFIG_STAMP" >"$BUILD/.configured"
fi

JOBS=${QEMU_BUILD_JOBS:-$(nproc)}
log "building QEMU with $JOBS jobs (log: $BUILD/build.log)"
start=$SECONDS
(cd "$BUILD" && PATH="$VENV/bin:$PATH" ninja -j "$JOBS" qemu-system-x86_64 >"$BUILD/build.log" 2>&1) \
    || { tail -n 40 "$BUILD/build.log" >&2; die "build failed (see $BUILD/build.log)"; }
log "build finished in $((SECONDS - start)) s"

# Verify that every device the tests need is compiled in.
devs=$("$BUILD/qemu-system-x86_64" "${QEMU_DATA_OPTS[@]}" -device help 2>&1)
for d in "${REQUIRED_DEVICES[@]}"; do
    grep -q "name \"$d\"" <<<"$devs" || die "device $d missing from the build"
done
for d in vhost-user-test-device-pci vhost-user-iommu-pci; do
    "$BUILD/qemu-system-x86_64" "${QEMU_DATA_OPTS[@]}" -device "$d,help" >/dev/null 2>&1 \
        || die "$d is not creatable"
done

mkdir -p "$QDIR/bin"
ln -sfn ../build/qemu-system-x86_64 "$BIN"
echo "$STAMP_CONTENT" >"$STAMP"
log "QEMU $QEMU_VERSION ready"
echo "$BIN"
