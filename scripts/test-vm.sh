#!/usr/bin/env bash
# Linux guests under QEMU (TCG, q35) against the vhost-user virtio-iommu daemon, and the same
# guest against QEMU's built-in virtio-iommu-pci for comparison. Run by scripts/test.sh.
#
#   1 dma          default DMA domains: the virtio_iommu driver binds to our device, every
#                  endpoint gets a group (PROBE then ATTACH each), MAP/UNMAP all S_OK, the
#                  endpoint's group switched identity -> DMA and the device removed and
#                  rescanned (ATTACH, ATTACH, DETACH, PROBE, ATTACH); then the guest reboots
#                  itself (sysrq b): the daemon must see the reset, drop its state, and the
#                  second boot must repeat the first one exactly; finally the VM is paused
#                  and resumed (stop/cont): the daemon must keep every domain and mapping
#                  and answer the guest's next MAP/UNMAPs
#   2 passthrough  QEMU quits and a new QEMU connects to the same daemon (reconnect);
#                  iommu.passthrough=1: bypass ATTACHes, no MAP, and two NICs exchange ARP
#   3 errors       a daemon with --max-mappings 4: MAPs beyond it get S_NOMEM, the guest still
#                  boots and finishes
#   4 builtin      the run-1 guest against QEMU's own virtio-iommu-pci (traced): same IOMMU
#                  groups and the same request sequence as run 1's first boot
#
# Logs stay in ~/.cache/virtio-iommu/test-vm/. Exit status 0 only if every check passes.
# Env: VM_TIMEOUT (s per QEMU run, default 180), VERBOSE=1 (print the guests' key lines).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
# shellcheck source=vm/lib.sh
. "$HERE/vm/lib.sh"

apt_ensure socat jq
with_lock test-vm
WORK=$VIRTIO_IOMMU_CACHE/test-vm
rm -rf "$WORK"
mkdir -p "$WORK"
trap vm_cleanup EXIT
TMO=${VM_TIMEOUT:-180}
T0=$SECONDS

"$HERE/build-qemu.sh" >/dev/null
VM_GUEST=$("$HERE/guest-kernel.sh")
vm_build
VM_INITRD=$(vm_initramfs "$WORK/initrd.cpio.gz")
VIOT=$WORK/viot.bin
vm_viot "$VIOT"
# Every request's type and status is logged at debug level: the request sequence.
export VM_RUST_LOG=vhost_device_iommu=debug

passed=0 failed=0
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
# expect NAME ACTUAL WANTED
expect() {
    if [ "$2" = "$3" ]; then pass "$1 ($2)"; else fail "$1: got '$2', want '$3'"; fi
}
# ensure NAME COMMAND...: passes if the command succeeds.
ensure() {
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# Serial log lines without carriage returns.
serial() { tr -d '\r' <"$1"; }
# The IOMMU groups a boot printed, as sorted device lists (group numbers dropped).
# groups SERIAL_LOG BOOT
groups_of() {
    serial "$1" | awk -v b="$2" '/^VM: boot /{n=$3+0} /^VM-GROUP: /&&n==b{$1="";$2=""; print}' \
        | sed 's/^ *//; s/ *$//' | sort | tr '\n' ';'
}
# Request types (MAP/UNMAP left out) from our daemon's debug log, boots separated by RESET.
our_sequence() {
    sed -n -e 's/.*DEBUG vhost_device_iommu::engine\] \([A-Z_]*\) .*: S_[A-Z]*$/\1/p' \
        -e 's/.*guest reset, resetting the device.*/RESET/p' "$1" \
        | grep -vE '^(MAP|UNMAP)$' | tr '\n' ' ' | sed 's/ $//'
}
# The same from QEMU's virtio_iommu trace events (one reserved region per PROBE).
qemu_sequence() {
    sed -n -e 's/^virtio_iommu_fill_resv_property .*/PROBE/p' \
        -e 's/^virtio_iommu_attach .*/ATTACH/p' -e 's/^virtio_iommu_detach .*/DETACH/p' "$1" \
        | tr '\n' ' ' | sed 's/ $//'
}
our_count() { grep -c "DEBUG vhost_device_iommu::engine\] $2 .*: S_[A-Z]*$" "$1" || true; }
qemu_count() { grep -c "^virtio_iommu_$2 " "$1" || true; }
# Sum of every non-OK counter (all request types) plus unknown types.
errors_of() {
    jq '([.[] | objects | select(has("ok") and has("no_reply"))
          | to_entries[] | select(.key != "ok") | .value] | add) + .unknown_type' "$1"
}
# dump summary: "ID:bypass:endpoints:mappings" per domain
dump_of() {
    jq -r '[.dump.domains[] | "\(.bypass):\(.endpoints|map(tostring)|join(","))"] | sort | join(" ")' "$1"
}
endpoints_of() {
    jq -r '[.dump.domains[].endpoints[]] | sort | map(tostring) | join(",")' "$1"
}
# Endpoint IDs (= BDF) of the devices in a boot's groups, for comparison with the dump.
group_ids_of() {
    groups_of "$1" "$2" | tr ';' '\n' | tr ' ' '\n' | sed -n 's/^0000:\([0-9a-f]*\):\([0-9a-f]*\)\.\([0-7]\)$/\1 \2 \3/p' \
        | while read -r b d f; do echo $(((0x$b << 8) | (0x$d << 3) | f)); done | sort -n | paste -sd,
}
# The stats and dump while the guest holds (vm.hold=1); $HOLD names the files.
# In the DMA run, then pause and resume the VM and let the guest cycle its NICs.
vm_on_hold() {
    vm_stats "$CTL" >"$WORK/$HOLD.stats"
    vm_ctl "$CTL" '{"cmd":"dump"}' >"$WORK/$HOLD.dump"
    [ "$HOLD" = dma ] || return 0
    local s=$WORK/dma.serial
    vm_monitor "$s" stop
    sleep 0.5
    vm_monitor "$s" cont
    vm_monitor "$s" "set_link p0 off"
    vm_wait_serial "$s" '^VM-HOLD2' 60 || log "the guest did not cycle its links"
    vm_stats "$CTL" >"$WORK/pause.stats"
    vm_ctl "$CTL" '{"cmd":"dump"}' >"$WORK/pause.dump"
}
# run NAME KIND APPEND [QEMU args]: one QEMU run; checks it ended by the host's quit.
run() {
    local name=$1 t=$SECONDS rc=0; shift
    log "run $name: booting"
    vm_boot "$TMO" "$WORK/$name.serial" "$@" || rc=$?
    log "run $name: QEMU exited with $rc after $((SECONDS - t)) s"
    [ "${VERBOSE:-0}" = 1 ] && serial "$WORK/$name.serial" | grep -E '^VM' | grep -v '^VM-PCI' >&2
    expect "$name: QEMU exit status" "$rc" 0
    ensure "$name: guest reached the hold point" grep -q '^VM-HOLD' "$WORK/$name.serial"
    if [ "$rc" != 0 ]; then
        tail -n 30 "$WORK/$name.serial.qemu" "$WORK/$name.serial" >&2 || true
    fi
}
# Waits until a daemon log shows N "listening" lines (it serves again after a disconnect).
wait_listening() {
    local _
    for _ in $(seq 100); do
        [ "$(grep -c 'listening on' "$1")" -ge "$2" ] && return 0
        sleep 0.05
    done
    return 1
}

# --- 1: DMA domains, rebind, guest reboot --------------------------------------------------
D1=$WORK/d1
mkdir -p "$D1"
vm_daemon_start "$D1"
D1PID=$VM_DPID
CTL=$D1/viommu.ctl HOLD=dma
run dma "vhost:$D1/viommu.sock:$VIOT" \
    "vm.links=1 vm.rebind=0000:00:05.0 vm.up=1 vm.reboot=1 vm.hold=1"
S=$WORK/dma.serial
expect "dma: boots that passed" "$(serial "$S" | grep -c '^VM-RESULT: PASS')" 2
ensure "dma: second boot ran" grep -q '^VM: boot 2' "$S"
ensure "dma: virtio_iommu bound to our device" grep -q '^VM: virtio_iommu driver bound to: virtio' "$S"
G1=$(groups_of "$S" 1)
expect "dma: groups of boot 1" "$G1" "0000:00:00.0;0000:00:04.0;0000:00:05.0;"
expect "dma: boot 2 has the groups of boot 1" "$(groups_of "$S" 2)" "$G1"
expect "dma: guest resets seen by the daemon" "$(grep -c 'guest reset, resetting the device' "$D1/daemon.log")" 1
SEQ=$(our_sequence "$D1/daemon.log")
BOOT1=${SEQ%% RESET*}
BOOT2=${SEQ#* RESET }
# Each of the 3 endpoints is probed, then attached; then the rebind step.
expect "dma: request sequence of boot 1" "$BOOT1" \
    "PROBE ATTACH PROBE ATTACH PROBE ATTACH ATTACH ATTACH DETACH PROBE ATTACH"
expect "dma: boot 2 repeats boot 1 after the reset" "$BOOT2" "$BOOT1"
ST=$WORK/dma.stats
expect "dma: non-OK statuses" "$(errors_of "$ST")" 0
ensure "dma: MAPs answered" [ "$(jq .map.ok "$ST")" -gt 0 ]
ensure "dma: UNMAPs answered" [ "$(jq .unmap.ok "$ST")" -gt 0 ]
expect "dma: live domains/endpoints at hold" "$(jq -c '[.domains, .attached_endpoints]' "$ST")" "[3,3]"
ensure "dma: live mappings at hold (links up)" [ "$(jq .mappings "$ST")" -gt 0 ]
expect "dma: attached endpoints = the guest's group members" "$(endpoints_of "$WORK/dma.dump")" \
    "$(group_ids_of "$S" 2)"
expect "dma: domains at hold (bypass:endpoints)" "$(dump_of "$WORK/dma.dump")" "false:0 false:32 false:40"
errs=$(serial "$S" | grep -E '^VM-ERR|^VM-WARN' | head -5 || true)
expect "dma: iommu errors / warnings in the guest's dmesg" "$errs" ""
# Pause / resume: state kept, later MAP/UNMAPs succeed.
ensure "pause: guest cycled its links after stop/cont" grep -q '^VM-HOLD2' "$S"
expect "pause: guest resets seen by the daemon" "$(grep -c 'guest reset, resetting the device' "$D1/daemon.log")" 1
ensure "pause: daemon saw the rings resume" grep -qE 'rings resumed at \[[1-9][0-9]*, ' "$D1/daemon.log"
expect "pause: non-OK statuses" "$(errors_of "$WORK/pause.stats")" 0
ensure "pause: more MAPs answered after the resume" \
    [ "$(jq .map.ok "$WORK/pause.stats")" -gt "$(jq .map.ok "$ST")" ]
expect "pause: live domains/endpoints" "$(jq -c '[.domains, .attached_endpoints]' "$WORK/pause.stats")" "[3,3]"
expect "pause: domains kept (bypass:endpoints)" "$(dump_of "$WORK/pause.dump")" "false:0 false:32 false:40"
# MAP/UNMAP totals before the pause, for the comparison with QEMU's device.
OUR_MAPS="$(jq -r '"\(.map.ok)/\(.unmap.ok)"' "$ST")"

# --- 2: reconnect, passthrough --------------------------------------------------------------
ensure "passthrough: daemon listens again after QEMU quit" wait_listening "$D1/daemon.log" 2
before=$(vm_stats "$CTL")
lines=$(wc -l <"$D1/daemon.log")
HOLD=passthrough
run passthrough "vhost:$D1/viommu.sock:$VIOT" "iommu.passthrough=1 vm.nic=1 vm.hold=1"
S=$WORK/passthrough.serial
ensure "passthrough: guest checks passed" grep -q '^VM-RESULT: PASS' "$S"
expect "passthrough: ARP between the NICs" "$(serial "$S" | grep -c '^VM: nic dma: ARP .* OK')" 2
expect "passthrough: groups" "$(groups_of "$S" 1)" "$G1"
tail -n +"$((lines + 1))" "$D1/daemon.log" >"$WORK/passthrough.daemon.log"
expect "passthrough: request sequence" "$(our_sequence "$WORK/passthrough.daemon.log")" \
    "PROBE ATTACH PROBE ATTACH PROBE ATTACH"
ST=$WORK/passthrough.stats
delta() { jq -n --argjson a "$before" --slurpfile b "$ST" "\$b[0].$1 - \$a.$1"; }
expect "passthrough: new PROBE/ATTACH/MAP" "$(delta probe.ok) $(delta attach.ok) $(delta map.ok)" "3 3 0"
expect "passthrough: non-OK statuses" "$(errors_of "$ST")" 0
expect "passthrough: domains at hold (bypass:endpoints)" "$(dump_of "$WORK/passthrough.dump")" \
    "true:0 true:32 true:40"
vm_daemon_stop "$D1PID"

# --- 3: errors from the daemon ------------------------------------------------------------
D2=$WORK/d2
mkdir -p "$D2"
vm_daemon_start "$D2" --max-mappings 4
D2PID=$VM_DPID
CTL=$D2/viommu.ctl HOLD=errors
run errors "vhost:$D2/viommu.sock:$VIOT" "vm.links=1 vm.up=1 vm.hold=1"
S=$WORK/errors.serial
ST=$WORK/errors.stats
ensure "errors: guest checks passed" grep -q '^VM-RESULT: PASS' "$S"
expect "errors: groups" "$(groups_of "$S" 1)" "$G1"
ensure "errors: MAPs refused with S_NOMEM" [ "$(jq .map.nomem "$ST")" -gt 0 ]
expect "errors: at most 4 mappings per domain" \
    "$(jq '[.dump.domains[].mappings | length] | max' "$WORK/errors.dump")" 4
expect "errors: statuses other than OK and NOMEM" \
    "$(jq '.map.nomem as $n | ([.[] | objects | select(has("ok") and has("no_reply"))
        | to_entries[] | select(.key != "ok") | .value] | add) - $n + .unknown_type' "$ST")" 0
vm_daemon_stop "$D2PID"

# --- 4: QEMU's built-in virtio-iommu-pci ---------------------------------------------------
HOLD=builtin CTL=
vm_on_hold() { :; }
run builtin builtin "vm.links=1 vm.rebind=0000:00:05.0 vm.up=1 vm.hold=1" \
    -trace virtio_iommu_attach -trace virtio_iommu_detach \
    -trace virtio_iommu_fill_resv_property -trace virtio_iommu_map -trace virtio_iommu_unmap
S=$WORK/builtin.serial
Q=$WORK/builtin.serial.qemu
ensure "builtin: guest checks passed" grep -q '^VM-RESULT: PASS' "$S"
expect "builtin: same groups as with our daemon" "$(groups_of "$S" 1)" "$G1"
expect "builtin: same request sequence as our daemon" "$(qemu_sequence "$Q")" "$BOOT1"
QEMU_MAPS="$(qemu_count "$Q" map)/$(qemu_count "$Q" unmap)"
# Our count covers both boots of run 1; each boot does what the built-in run does.
expect "builtin: MAP/UNMAP counts, twice = ours over two boots" \
    "$(( ${QEMU_MAPS%/*} * 2 ))/$(( ${QEMU_MAPS#*/} * 2 ))" "$OUR_MAPS"
# Guest-visible differences, for the record (not failures): the dmesg lines that differ.
norm() { serial "$1" | sed -n 's/^VM-DMESG: \[ *[0-9.]*\] //p' | awk '!/VIOT/' | sort -u; }
diff <(norm "$WORK/dma.serial") <(norm "$S") | sed -n 's/^\([<>]\)/  \1/p' >"$WORK/dmesg.diff" || true
log "dmesg differences (< our daemon, > QEMU's virtio-iommu-pci):"
cat "$WORK/dmesg.diff" >&2

log "$passed checks passed, $failed failed, in $((SECONDS - T0)) s (logs: $WORK)"
[ "$failed" = 0 ]
