#!/usr/bin/env bash
# Fetch the guest kernel used by the QEMU tests: Debian's 6.12 amd64 kernel
# from bookworm-backports (vmlinuz + the modules needed for virtio-iommu, a
# NIC endpoint and VFIO, decompressed, with their load order) and a static
# busybox, cached under ~/.cache/virtio-iommu/guest/.
# Idempotent: a complete cache is reused without touching the network.
# Prints the guest directory (…/guest/current) on stdout; logs go to stderr.
# Env: VIRTIO_IOMMU_CACHE (cache root), GUEST_MODULES (space-separated module
#      names to include, dependencies are added automatically).
# Layout of the guest directory:
#   vmlinuz  config  System.map  kernel-release
#   modules/*.ko       decompressed modules
#   modules.load       module file names in load order (dependencies first)
#   busybox            static busybox (Debian busybox-static)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

GUEST_MODULES=${GUEST_MODULES:-virtio_iommu virtio_net virtio_blk e1000e vfio_pci vfio_iommu_type1}
GDIR=$VIRTIO_IOMMU_CACHE/guest
CUR=$GDIR/current
STAMP_CONTENT="modules=$GUEST_MODULES"

if [ -f "$CUR/.done" ] && [ "$(cat "$CUR/.done")" = "$STAMP_CONTENT" ] \
    && [ -f "$CUR/vmlinuz" ] && [ -x "$CUR/busybox" ]; then
    echo "$CUR"
    exit 0
fi

with_lock guest-kernel
apt_ensure kmod xz-utils zstd
mkdir -p "$GDIR/debs"

# 1. Kernel: newest linux-image-6.12.*-amd64-unsigned that really downloads.
# newest FILE... : the highest version among existing files (empty if none)
newest() { [ -e "$1" ] || return 0; printf '%s\n' "$@" | sort -V | tail -n1; }
kdeb=$(newest "$GDIR"/debs/linux-image-6.12.*-amd64-unsigned_*.deb)
if [ -z "$kdeb" ]; then
    papt_update
    mapfile -t cands < <(apt-cache "${PAPT_OPTS[@]}" pkgnames linux-image-6.12 \
        | grep -E '^linux-image-6\.12\.[0-9]+\+deb12(\.[0-9]+)?-amd64-unsigned$' | sort -rV)
    [ ${#cands[@]} -gt 0 ] || die "no linux-image-6.12*-amd64-unsigned in bookworm-backports"
    for p in "${cands[@]}"; do
        log "downloading $p"
        if (cd "$GDIR/debs" && apt-get -qq "${PAPT_OPTS[@]}" download "$p" >&2); then
            kdeb=$(newest "$GDIR"/debs/"${p}"_*.deb)
            break
        fi
        log "download of $p failed, trying an older one"
    done
    [ -n "$kdeb" ] || die "none of ${cands[*]} could be downloaded"
fi

# 2. busybox-static (shared with the test-kernel scripts).
bb=$(busybox_static)

# 3. Extract into a fresh directory, then swap it in.
tmp=$(mktemp -d "$GDIR/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "extracting $(basename "$kdeb")"
dpkg-deb -x "$kdeb" "$tmp/root"
krel=$(basename "$(ls -d "$tmp"/root/lib/modules/*)")
out=$tmp/out
mkdir -p "$out/modules"
cp "$tmp/root/boot/vmlinuz-$krel" "$out/vmlinuz"
cp "$tmp/root/boot/config-$krel" "$out/config"
cp "$tmp/root/boot/System.map-$krel" "$out/System.map"
echo "$krel" >"$out/kernel-release"
cp "$bb" "$out/busybox"
chmod 755 "$out/busybox"

# The .deb has no modules.dep (depmod runs at install time, and running it
# here takes ~10 s): read each needed module's "depends=" modinfo field
# instead, which is what depmod turns into modules.dep.
mdir=$tmp/root/lib/modules/$krel
declare -A path_of=() done_mod=()
while IFS= read -r f; do
    n=$(basename "$f"); n=${n%%.ko*}; n=${n//-/_}
    path_of[$n]=$f
done < <(cd "$mdir" && find kernel -name '*.ko*')
dep_of() { modinfo -F depends "$mdir/${path_of[$1]}" | tr ',' ' '; }
order=()
visit() {
    local m=${1//-/_} d
    [ -n "${done_mod[$m]:-}" ] && return 0
    done_mod[$m]=1
    if [ -z "${path_of[$m]:-}" ]; then
        if grep -Eq "/${m//_/[-_]}\.ko\$" "$mdir/modules.builtin"; then
            log "module $m is built into the kernel"
            return 0
        fi
        die "module $m not found in $krel"
    fi
    for d in $(dep_of "$m"); do
        d=$(basename "$d"); d=${d%%.ko*}
        visit "$d"
    done
    order+=("$m")
}
for m in $GUEST_MODULES; do visit "$m"; done

: >"$out/modules.load"
for m in "${order[@]}"; do
    src=$mdir/${path_of[$m]}
    base=$(basename "$src"); base=${base%%.ko*}.ko
    case "$src" in
        *.ko.xz)  xz -dc "$src" >"$out/modules/$base" ;;
        *.ko.zst) zstd -qdc "$src" >"$out/modules/$base" ;;
        *.ko.gz)  gzip -dc "$src" >"$out/modules/$base" ;;
        *.ko)     cp "$src" "$out/modules/$base" ;;
        *) die "unknown module format: $src" ;;
    esac
    echo "$base" >>"$out/modules.load"
done
log "modules (load order): $(tr '\n' ' ' <"$out/modules.load")"

echo "$STAMP_CONTENT" >"$out/.done"
dest=$GDIR/linux-$krel
rm -rf "$dest"
mv "$out" "$dest"
ln -sfn "linux-$krel" "$CUR"
log "guest kernel $krel ready in $dest"
echo "$CUR"
