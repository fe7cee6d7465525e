#!/usr/bin/env bash
# Run the cached QEMU 10.2.2 qemu-system-x86_64 (built by build-qemu.sh on
# first use) with the firmware search paths of Debian's seabios,
# qemu-system-data and ipxe-qemu. All arguments are passed through, e.g.
#   scripts/qemu.sh -device help
#   scripts/qemu.sh -accel tcg -M q35 -m 512 -nodefaults -display none -serial stdio \
#       -no-reboot -kernel ... -initrd ...   (-nodefaults: the default devices cost ~30 s of BIOS)
# Always use -accel tcg on this host: /dev/kvm is a software (PVM) KVM that
# cannot run an upstream guest kernel.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
BIN=$("$HERE/build-qemu.sh")
exec "$BIN" -L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu "$@"
