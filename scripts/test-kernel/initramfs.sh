# shellcheck shell=bash
# Sourced by the test-kernel scripts: packs busybox, an /init script and one test program into a
# newc initramfs with the kernel build's gen_init_cpio.
#
# usage: test_kernel_initramfs GEN_INIT_CPIO BUSYBOX INIT PROGRAM_SRC PROGRAM_DEST OUT_DIR [EXTRA]
# writes OUT_DIR/initramfs.list and OUT_DIR/initramfs.cpio; EXTRA is a file of more
# gen_init_cpio lines (dir/file/slink) appended to the list.
test_kernel_initramfs() {
    local gen=$1 bb=$2 init=$3 src=$4 dest=$5 out=$6 extra=${7:-}
    cat >"$out/initramfs.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /bin 0755 0 0
dir /sbin 0755 0 0
dir /usr 0755 0 0
dir /usr/bin 0755 0 0
dir /usr/sbin 0755 0 0
dir /proc 0755 0 0
dir /sys 0755 0 0
dir /tmp 1777 0 0
file /bin/busybox $bb 0755 0 0
slink /bin/sh busybox 0777 0 0
file /init $init 0755 0 0
file $dest $src 0755 0 0
LIST
    if [ -n "$extra" ]; then cat "$extra" >>"$out/initramfs.list"; fi
    "$gen" "$out/initramfs.list" >"$out/initramfs.cpio"
}
