#!/usr/bin/env bash
# Build (once) a small x86_64 guest kernel with IOMMUFD + IOMMUFD_TEST, VFIO cdev, intel-iommu
# with IRQ remapping and virtio-iommu, from Debian's `linux` source package (sid deb-src).
#
# Usage: scripts/build-test-kernel.sh            -> prints the cache directory as the LAST line
#        K=$(scripts/build-test-kernel.sh | tail -n1)
#
# Idempotent: when the cache directory exists and was built from the same fragment and recipe,
# the script only prints its path (no network, no apt; well under 1 s). All progress output goes
# to stderr; stdout carries only the final path.
#
# Cache layout (under $VIRTIO_IOMMU_CACHE, default ~/.cache/virtio-iommu):
#   test-kernel-<upstream ver>/   e.g. test-kernel-7.2.8
#       bzImage                  gzip-compressed kernel (~2 MiB), boot with -kernel
#       config                   the final .config
#       System.map
#       usr/include/...          `make headers` output: uAPI headers of this tree
#                                (linux/iommufd.h, linux/vfio.h, asm/..., for gcc -I / bindgen)
#       selftest/iommufd_test.h  drivers/iommu/iommufd/iommufd_test.h (IOMMU_TEST_CMD layouts;
#                                use -I .../selftest)
#       selftest/iommu/          tools/testing/selftests/iommu/ (reference test sequences)
#       bin/gen_init_cpio        host tool from the build to write newc initramfs archives
#       source-version           Debian source version used (e.g. 7.2.8-1) + orig tarball sha256
#       .stamp                   recipe revision + fragment hash (cache key)
#   test-kernel -> test-kernel-<ver>   convenience symlink to the last good build
#   src/linux_<ver>.orig.tar.xz        kept (156 MiB) so a rebuild does not depend on the mirror
#                                      still carrying that version
#   apt/                               the private apt configuration of common.sh (papt_update)
# The unpacked source tree (~1.8 GiB) and the O= build tree (~150 MiB) live in
# work/test-kernel-<ver>/ only during the build and are deleted afterwards
# (KEEP_BUILD=1 keeps them).
#
# Environment:
#   TEST_KERNEL_VERSIONS  Debian source versions to try, in order (default: 7.2.8-1 first, then a
#                         short fallback list). The first one whose orig tarball downloads wins.
#   VIRTIO_IOMMU_CACHE    cache root (common.sh)
#   JOBS                  make -j (default: nproc)
#   KEEP_BUILD=1          keep source + build trees;  KEEP_TARBALL=0  delete the orig tarball
#   FORCE=1               rebuild even if the cache is valid
#   PROBE_ONLY=1          only choose + download the source version, print "<ver> <tarball>"
#
# System sources are never touched: sid deb-src is used through common.sh's private apt
# configuration.
set -euo pipefail
# The whole script is one compound command, parsed before it runs: editing this file while
# it runs cannot change what the running instance executes.
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
FRAGMENT=${TEST_KERNEL_FRAGMENT:-$HERE/test-kernel/iommufd.config}
CANDIDATES=${TEST_KERNEL_VERSIONS:-"7.2.8-1 7.2.7-1 7.2.13-1 7.2.12-1 7.2.11-1 7.2.10-1 7.2.9-1 7.1.8-2 7.0.13-1 7.0.4-1"}
JOBS=${JOBS:-$(nproc)}
KEEP_BUILD=${KEEP_BUILD:-0}
KEEP_TARBALL=${KEEP_TARBALL:-1}
FORCE=${FORCE:-0}
# Bump when the build recipe (not the fragment) changes in a way that needs a rebuild.
RECIPE_REV=1

[ -f "$FRAGMENT" ] || die "config fragment not found: $FRAGMENT"
STAMP_WANT="recipe=$RECIPE_REV fragment=$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"

# ---------------------------------------------------------------- fast path (cached) ----------
cached_dir() {
  local v up d
  for v in $CANDIDATES; do
    up=${v%-*}
    d=$VIRTIO_IOMMU_CACHE/test-kernel-$up
    if [ -f "$d/.stamp" ] && [ -f "$d/bzImage" ] && [ "$(cat "$d/.stamp")" = "$STAMP_WANT" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}
if [ "$FORCE" != 1 ] && d=$(cached_dir); then
  log "cached: $d"
  printf '%s\n' "$d"
  exit 0
fi

with_lock test-kernel
# Someone else may have finished the build while we waited.
if [ "$FORCE" != 1 ] && d=$(cached_dir); then
  log "cached: $d"
  printf '%s\n' "$d"
  exit 0
fi

T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 ))s"; }

# ---------------------------------------------------------------- host prerequisites ----------
apt_ensure gcc make libc6-dev flex bison bc perl xz-utils libelf-dev
# Debian's sid deb-src through the private apt configuration (system sources untouched).
papt_update

# ---------------------------------------------------------------- pick + fetch a version -----
SRC_DIR=$VIRTIO_IOMMU_CACHE/src
PROBE_DIR=$PAPT_DIR/probe
mkdir -p "$SRC_DIR"
rm -rf "$PROBE_DIR"
mkdir -p "$PROBE_DIR"
VER="" UP="" TARBALL="" SHA=""
for v in $CANDIDATES; do
  up=${v%-*}
  line=""
  # Run in an empty directory: apt omits files that already exist in the cwd from --print-uris.
  if uris=$(cd "$PROBE_DIR" && apt-get "${PAPT_OPTS[@]}" source --print-uris --only-source "linux=$v" 2>/dev/null); then
    line=$(printf '%s\n' "$uris" | grep -E "^'[^']*\.orig\.tar\.[a-z0-9]+' " | head -n1) || true
  fi
  if [ -z "$line" ]; then
    # Not (or no longer) in the index: a tarball downloaded earlier is still fine.
    f=$SRC_DIR/linux_$up.orig.tar.xz
    if [ -f "$f" ] && [ -f "$f.sha256" ] && [ "$(sha256sum <"$f" | cut -d' ' -f1)" = "$(cat "$f.sha256")" ]; then
      log "linux=$v: not in the source index, using cached $f"
      VER=$v UP=$up TARBALL=$f SHA=$(cat "$f.sha256")
      break
    fi
    log "linux=$v: not in the source index"
    continue
  fi
  uri=$(printf '%s' "$line" | cut -d"'" -f2)
  fname=$(printf '%s' "$line" | awk '{print $2}')
  hash=$(printf '%s' "$line" | awk '{print $4}')          # SHA256:xxxx
  case $hash in SHA256:*) ;; *) log "linux=$v: unexpected hash field '$hash'"; continue;; esac
  if [ -f "$SRC_DIR/$fname" ] && [ "$(sha256sum <"$SRC_DIR/$fname" | cut -d' ' -f1)" = "${hash#SHA256:}" ]; then
    log "linux=$v: using cached $SRC_DIR/$fname"
  else
    log "linux=$v: downloading $uri"
    rm -f "$SRC_DIR/$fname.part"
    if ! /usr/lib/apt/apt-helper "${PAPT_OPTS[@]}" download-file "$uri" "$SRC_DIR/$fname.part" "$hash" >&2; then
      log "linux=$v: download failed (mirror may have dropped it), trying the next version"
      rm -f "$SRC_DIR/$fname.part"
      continue
    fi
    mv "$SRC_DIR/$fname.part" "$SRC_DIR/$fname"
  fi
  printf '%s\n' "${hash#SHA256:}" >"$SRC_DIR/$fname.sha256"
  VER=$v UP=$up TARBALL=$SRC_DIR/$fname SHA=${hash#SHA256:}
  break
done
[ -n "$VER" ] || die "none of the candidate versions could be downloaded: $CANDIDATES"
log "chosen: linux $VER ($(elapsed))"
if [ "${PROBE_ONLY:-0}" = 1 ]; then   # test hook: only pick + fetch the source, print it
  printf '%s %s\n' "$VER" "$TARBALL"
  exit 0
fi

# ---------------------------------------------------------------- unpack ----------------------
WORK=$VIRTIO_IOMMU_CACHE/work/test-kernel-$UP
S=$WORK/src
B=$WORK/build
rm -rf "$WORK"
mkdir -p "$S" "$B"
log "unpacking $TARBALL"
tar -xf "$TARBALL" -C "$S" --strip-components=1
[ -f "$S/Makefile" ] || die "unexpected tarball layout (no top-level Makefile)"
log "unpacked ($(elapsed))"

# ---------------------------------------------------------------- configure -------------------
MK=(make -C "$S" O="$B" ARCH=x86_64 KBUILD_BUILD_USER=virtio-iommu KBUILD_BUILD_HOST=test-kernel)
LOG=$WORK/build.log
run_logged() {  # run a command, keep its output in $LOG, show the tail on failure
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    die "command failed: $* (full log: $LOG)"
  fi
}
run_logged "${MK[@]}" tinyconfig

symbol_defined() { grep -rqs --include='Kconfig*' -E "^[[:space:]]*(menu)?config[[:space:]]+$1\$" "$S"; }

declare -a REQ_Y=() OPT_Y=() REQ_N=()
while IFS= read -r raw; do
  line=${raw%%$'\r'}
  if [[ $line =~ ^#\ CONFIG_([A-Za-z0-9_]+)\ is\ not\ set ]]; then
    sym=${BASH_REMATCH[1]}
    "$S/scripts/config" --file "$B/.config" -d "$sym"
    REQ_N+=("$sym")
  elif [[ $line =~ ^CONFIG_([A-Za-z0-9_]+)=y([[:space:]]*#[[:space:]]*([a-z-]+))? ]]; then
    sym=${BASH_REMATCH[1]} tag=${BASH_REMATCH[3]:-}
    if [ "$tag" = if-defined ] && ! symbol_defined "$sym"; then
      log "note: $sym is not defined in this tree, skipped"
      continue
    fi
    "$S/scripts/config" --file "$B/.config" -e "$sym"
    if [ "$tag" = optional ]; then OPT_Y+=("$sym"); else REQ_Y+=("$sym"); fi
  elif [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then
    :
  else
    die "cannot parse fragment line: $raw"
  fi
done <"$FRAGMENT"
run_logged "${MK[@]}" olddefconfig

missing=()
for sym in "${REQ_Y[@]}"; do
  if ! grep -qx "CONFIG_$sym=y" "$B/.config"; then missing+=("CONFIG_$sym"); fi
done
for sym in "${REQ_N[@]}"; do
  if grep -qx "CONFIG_$sym=y" "$B/.config"; then missing+=("!CONFIG_$sym"); fi
done
for sym in "${OPT_Y[@]}"; do
  if ! grep -qx "CONFIG_$sym=y" "$B/.config"; then
    log "warning: optional CONFIG_$sym did not survive olddefconfig"
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  die "required options did not survive olddefconfig (unmet dependencies?): ${missing[*]}
       (.config kept at $B/.config)"
fi
log "config verified: ${#REQ_Y[@]} required =y, ${#REQ_N[@]} required off ($(elapsed))"

# ---------------------------------------------------------------- build -----------------------
log "make -j$JOBS bzImage (log: $LOG)"
run_logged "${MK[@]}" -j"$JOBS" bzImage
log "bzImage built ($(elapsed))"
run_logged "${MK[@]}" -j"$JOBS" headers
[ -x "$B/usr/gen_init_cpio" ] || run_logged "${MK[@]}" usr/gen_init_cpio
log "headers built ($(elapsed))"

# ---------------------------------------------------------------- install into the cache -----
DEST=$VIRTIO_IOMMU_CACHE/test-kernel-$UP
TMP=$DEST.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP/usr" "$TMP/selftest" "$TMP/bin"
cp "$B/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$B/.config" "$TMP/config"
cp "$B/System.map" "$TMP/System.map"
cp -a "$B/usr/include" "$TMP/usr/include"
find "$TMP/usr/include" -name '.*' -type f -delete
cp "$S/drivers/iommu/iommufd/iommufd_test.h" "$TMP/selftest/iommufd_test.h"
if [ -d "$S/tools/testing/selftests/iommu" ]; then
  cp -a "$S/tools/testing/selftests/iommu" "$TMP/selftest/iommu"
fi
if [ -x "$B/usr/gen_init_cpio" ]; then cp "$B/usr/gen_init_cpio" "$TMP/bin/gen_init_cpio"; fi
printf 'debian-source=linux %s\norig-sha256=%s\nkernelrelease=%s\n' \
  "$VER" "$SHA" "$(cat "$B/include/config/kernel.release" 2>/dev/null || echo "$UP")" >"$TMP/source-version"
# sanity checks on what later steps rely on
for f in usr/include/linux/iommufd.h usr/include/linux/vfio.h selftest/iommufd_test.h; do
  [ -f "$TMP/$f" ] || die "missing $f in the installed cache"
done
printf '%s\n' "$STAMP_WANT" >"$TMP/.stamp"
rm -rf "$DEST"
mv "$TMP" "$DEST"
ln -sfn "test-kernel-$UP" "$VIRTIO_IOMMU_CACHE/test-kernel"

if [ "$KEEP_BUILD" != 1 ]; then
  log "removing source and build trees ($WORK)"
  rm -rf "$WORK"
  rmdir "$VIRTIO_IOMMU_CACHE/work" 2>/dev/null || true
fi
if [ "$KEEP_TARBALL" = 0 ]; then rm -f "$TARBALL"; fi

log "done in $(elapsed): $(du -sh "$DEST" | cut -f1) in $DEST, bzImage $(stat -c %s "$DEST/bzImage") bytes"
printf '%s\n' "$DEST"
exit
}
