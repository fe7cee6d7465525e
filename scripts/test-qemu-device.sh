#!/usr/bin/env bash
# Linux guests under QEMU (TCG, q35) with the vhost-user-iommu-pci device of qemu/patches/:
# QEMU is the PCI bus's IOMMU and translates every emulated device's DMA through the daemon's
# translation service (spec/TRANSLATION.md). Run by scripts/test.sh.
#
#   1 lazy     default DMA domains: the e1000e and the virtio-net on one hub exchange ARP
#              (TX and RX DMA on both NICs, through translated IOVAs); the daemon's counters
#              show the translations; the VIOT the guest got from QEMU is the one mkviot
#              writes for the daemon's --viot (the endpoint sets agree)
#   3 isolation (same boot) QEMU's edu bound to vfio-pci (type1 container) in the guest:
#              DMA through mapped IOVAs lands in the buffer; DMA to an IOVA after its UNMAP
#              and to a buffer's guest-physical address used as IOVA touch nothing, the
#              daemon turns each refused TRANSLATE into a fault event, and the guest's
#              virtio-iommu driver logs "page fault from EP 56 at <IOVA>" for both
#   5 restart  (same boot) the daemon (with --state-file) is killed with SIGKILL while the
#              guest idles and started again on the same sockets and state file: it resumes
#              the guest's domains and mappings, QEMU reconnects both sockets, and the guest's
#              next requests (it cycles its links on a carrier loss: UNMAP, MAP) all get S_OK;
#              its NICs then exchange ARP again through translations of the new daemon, and
#              the guest's dmesg has no new iommu error
#   1 strict   the ARP exchange again with iommu.strict=1 (every UNMAP invalidated at once)
#   2 blk      (same boot) QEMU's virtio-blk-pci behind the IOMMU: the guest writes 4 MiB of
#              random data, drops its caches and reads it back; the sums match, and the disk
#              image on the host holds the same bytes
#   4 vhost-user QEMU's vhost-user-blk-pci (iommu_platform=on) behind the IOMMU, served by
#              vhost-user-blk-confined, which translates its rings and buffers through the
#              daemon's translation socket (endpoint 48): the guest writes 4 MiB of random
#              data, drops its caches and reads it back; the sums match, the disk file holds
#              the same bytes, the backend got its rings as IOVAs and acknowledged QEMU's vhost
#              IOTLB messages, and the daemon translated for both of its clients
#   7 restarts (issue 17) a guest moving disk blocks (1 MiB written, caches dropped, read
#              back, compared) and ARP between its NICs for 40 s while the daemon is SIGKILLed
#              and started again on its --state-file RESTARTS times (default 10) at random
#              moments 0.5-2.5 s apart: every new daemon resumes the guest's state, no disk
#              round and no ARP exchange fails (QEMU's translations wait for the translation
#              socket while the daemon is away), the guest's dmesg has no iommu error or
#              kernel warning, and no request got a non-OK status
#   8 migrate  (issue 17) the same traffic for 30 s; after 5 s the guest is live-migrated
#              over a UNIX socket to a second QEMU (-incoming, -S) with a second daemon:
#              while the destination is paused both daemons hold the same domains and
#              mappings; after it runs, no disk round or ARP exchange fails, the destination
#              daemon answers the guest's requests and translates its devices' DMA, and once
#              the source QEMU quits its daemon (with --state-file) holds no domain
#   6 speed    the same guest and disk, lazy DMA domains, ours, then QEMU's own
#              virtio-iommu-pci (devices with iommu_platform=on, same memory backend):
#              O_DIRECT sequential read of SPEED_MIB MiB (default 128) from a virtio-blk disk
#              (MB/s) and raw frames between the two NICs, SPEED_SECS s (default 5) each way
#              (packets/s); prints both figures and ours/theirs (target >= 0.8, reported,
#              not a failure), and the daemon's MAP/UNMAP/TRANSLATE/INVALIDATE counts per
#              MiB and per packet (where our time goes)
#
# Logs stay in ~/.cache/virtio-iommu/test-qemu-device/. Exit status 0 only if every check
# passes. Env: VM_TIMEOUT (s per QEMU run, default 180), VERBOSE=1.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
# shellcheck source=vm/lib.sh
. "$HERE/vm/lib.sh"

apt_ensure socat jq
with_lock test-vm
WORK=$VIRTIO_IOMMU_CACHE/test-qemu-device
rm -rf "$WORK"
mkdir -p "$WORK"
trap vm_cleanup EXIT
TMO=${VM_TIMEOUT:-180}
T0=$SECONDS

"$HERE/build-qemu.sh" >/dev/null
VM_GUEST=$("$HERE/guest-kernel.sh")
vm_build
(cd "$VM_ROOT" && cargo build -q -p vhost-user-blk-confined) >&2
TOOL=$(vm_guest_tool)
VM_INITRD=$(vm_initramfs "$WORK/initrd.cpio.gz" --add "$TOOL:/bin/vm-guest-tool")
VIOT=$WORK/viot.bin
vm_viot "$VIOT"
export VM_RUST_LOG=vhost_device_iommu=debug

passed=0 failed=0
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
expect() {
    if [ "$2" = "$3" ]; then pass "$1 ($2)"; else fail "$1: got '$2', want '$3'"; fi
}
ensure() {
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
serial() { tr -d '\r' <"$1"; }
# Non-OK statuses of every request type, plus unknown types.
errors_of() {
    jq '([.[] | objects | select(has("ok") and has("no_reply"))
          | to_entries[] | select(.key != "ok") | .value] | add) + .unknown_type' "$1"
}
# Requests the daemon answered, whatever their status.
requests_of() {
    jq '[.[] | objects | select(has("ok") and has("no_reply")) | to_entries[]
         | select(.key != "no_reply") | .value] | add' "$1"
}
# Translations the daemon answered OK over its translation socket.
translations_of() { jq '.translation.translate_ok' "$1"; }

# daemon_start DIR [options]: our daemon with a translation socket next to its others.
daemon_start() {
    local dir=$1; shift
    rm -f "$dir/viommu.xlate"
    vm_daemon_start "$dir" --viot "$VIOT" --translation-socket "$dir/viommu.xlate" "$@"
    local _
    for _ in $(seq 100); do
        [ -S "$dir/viommu.xlate" ] && return 0
        sleep 0.05
    done
    die "daemon did not create its translation socket"
}

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
# Common checks of a guest that did the ARP exchange in DMA domains.
nic_checks() {
    local name=$1 s=$WORK/$1.serial st=$WORK/$1.stats
    ensure "$name: guest checks passed" grep -q '^VM-RESULT: PASS' "$s"
    ensure "$name: virtio_iommu bound to vhost-user-iommu-pci" \
        grep -q '^VM: virtio_iommu driver bound to: virtio' "$s"
    expect "$name: ARP between the NICs" "$(serial "$s" | grep -c '^VM: nic dma: ARP .* OK')" 2
    expect "$name: NICs in DMA domains" \
        "$(serial "$s" | grep -cE '^VM-PCI: 0000:00:0[45]\.0 .* type=DMA(-FQ)?$')" 2
    expect "$name: non-OK statuses" "$(errors_of "$st")" 0
    ensure "$name: MAPs answered" [ "$(jq .map.ok "$st")" -gt 0 ]
    ensure "$name: DMA translated by the daemon ($(translations_of "$st") translations)" \
        [ "$(translations_of "$st")" -gt 0 ]
    ensure "$name: INVALIDATEs acknowledged by QEMU ($(jq -c '.translation | [.invalidates, .acks]' "$st"))" \
        [ "$(jq .translation.acks "$st")" -gt 0 ]
    expect "$name: translation clients cut off or in protocol error" \
        "$(jq '.translation | .cut_off_timeout + .cut_off_backlog + .protocol_errors' "$st")" 0
}

# --- 1 + 5: lazy DMA domains, then the daemon restarts under the idle guest ------------------
D=$WORK/d1
mkdir -p "$D"
daemon_start "$D" --state-file "$D/viommu.state"
DPID=$VM_DPID
CTL=$D/viommu.ctl
vm_on_hold() {
    vm_stats "$CTL" >"$WORK/lazy.stats"
    # 5: kill the daemon while the guest idles, start a new one on the same sockets.
    kill -KILL "$DPID"
    wait "$DPID" 2>/dev/null || true
    vm_forget "$DPID"
    sleep 0.5
    # The same options and state file: the new daemon resumes what the guest built.
    daemon_start "$D" --state-file "$D/viommu.state"
    DPID=$VM_DPID
    local s=$WORK/lazy.serial _
    for _ in $(seq 50); do
        grep -q 'translation service .* connected again' "$s.qemu" && break
        sleep 0.1
    done
    # The guest's next requests: it cycles its links (UNMAP, MAP) on the carrier loss, then
    # exchanges ARP again once the carrier is back.
    vm_monitor "$s" "set_link p0 off"
    sleep 1
    vm_monitor "$s" "set_link p0 on"
    vm_wait_serial "$s" '^VM-HOLD2: links cycled' 90 || log "the guest did not cycle its links"
    vm_stats "$CTL" >"$WORK/restart.stats"
}
# edu at 07.0 (endpoint 56); a 32-bit DMA mask so that any guest-physical address is a
# valid target for its engine.
EDU_EP=56
run lazy "device:$D/viommu.sock:$D/viommu.xlate" "vm.nic=1 vm.viot=1 vm.edu=1 vm.hold=1 vm.holdarp=1" \
    -device edu,addr=07.0,dma_mask=0xffffffff
nic_checks lazy
S=$WORK/lazy.serial
# 3: isolation
ensure "isolation: edu bound to vfio-pci in the guest" grep -q '^VM: edu .* bound to vfio-pci' "$S"
serial "$S" | sed -n 's/^VM-EDU: //p' >"$WORK/edu.out"
sed -n 's/^\(PASS\|FAIL\): /isolation: guest: \1: /p' "$WORK/edu.out" >&2
expect "isolation: the guest's edu checks" "$(sed -n 's/^RESULT: //p' "$WORK/edu.out")" \
    "edu-isolation: 7 passed, 0 failed"
FAULTS=$(sed -n 's/^VM-EDU-FAULTS: //p' "$WORK/edu.out")
ensure "isolation: two blocked DMAs reported (IOVAs ${FAULTS:-none})" [ "$(wc -w <<<"$FAULTS")" = 2 ]
for iova in $FAULTS; do
    line=$(serial "$S" | grep -m1 "^VM-FAULT: .* fault from EP $EDU_EP at $iova " || true)
    ensure "isolation: the guest kernel logged the fault at $iova: '${line#VM-FAULT: }'" [ -n "$line" ]
done
ST=$WORK/lazy.stats
ensure "isolation: the daemon refused TRANSLATEs and raised fault events ($(jq -c '[.translation.translate_fault, .events.delivered]' "$ST"))" \
    [ "$(jq .translation.translate_fault "$ST")" -ge 2 -a "$(jq .events.delivered "$ST")" -ge 2 ]
expect "lazy: the VIOT QEMU built is the one mkviot writes for the daemon" \
    "$(serial "$S" | sed -n 's/^VM-VIOT: //p' | cut -c73-)" "$(od -An -v -tx1 "$VIOT" | tr -d ' \n')"
ensure "restart: QEMU reconnected to the new daemon's translation socket" \
    grep -q 'translation service .* connected again' "$S.qemu"
RST=$WORK/restart.stats
expect "restart: QEMU's vhost-user connection came back (driver features negotiated twice)" \
    "$(grep -c 'driver features' "$D/daemon.log")" 2
ensure "restart: the new daemon resumed the guest's state ($(grep -o 'resumed [0-9]* domains, [0-9]* mappings' "$D/daemon.log" | tail -n1))" \
    grep -q 'state file .* resumed [1-9][0-9]* domains' "$D/daemon.log"
# The resumed counters carry on from the old daemon's: more than it had at the hold point.
ensure "restart: the guest's next requests were answered by the new daemon ($(requests_of "$WORK/lazy.stats") -> $(requests_of "$RST"))" \
    [ "$(requests_of "$RST")" -gt "$(requests_of "$WORK/lazy.stats")" ]
expect "restart: non-OK statuses after the restart" "$(errors_of "$RST")" 0
expect "restart: ARP between the NICs after the restart" \
    "$(serial "$S" | grep -c '^VM-HOLD2: nic dma: ARP .* OK')" 2
ensure "restart: the NICs' DMA translated by the new daemon ($(translations_of "$RST") translations)" \
    [ "$(translations_of "$RST")" -gt 0 ]
expect "restart: the guest's new iommu errors in dmesg" \
    "$(serial "$S" | sed -n 's/^VM-HOLD2: iommu errors in dmesg since the hold: //p')" 0
log "restart: the new daemon's counters: $(jq -c '{map, unmap, attach, detach}' "$RST")"
vm_daemon_stop "$DPID"

# --- 1 strict: iommu.strict=1 ---------------------------------------------------------------
D=$WORK/d2
mkdir -p "$D"
daemon_start "$D"
DPID=$VM_DPID
CTL=$D/viommu.ctl
vm_on_hold() { vm_stats "$CTL" >"$WORK/strict.stats"; }
DISK=$WORK/disk.img
truncate -s 16M "$DISK"
run strict "device:$D/viommu.sock:$D/viommu.xlate" "vm.nic=1 vm.blk=1 vm.hold=1 iommu.strict=1" \
    -drive "file=$DISK,if=none,id=disk0,format=raw,cache=none" \
    -device virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on,addr=06.0
nic_checks strict
ensure "strict: UNMAPs answered" [ "$(jq .unmap.ok "$WORK/strict.stats")" -gt 0 ]
S=$WORK/strict.serial
GSUM=$(serial "$S" | sed -n 's/^VM: blk dma: .* sha256 \([0-9a-f]*\)$/\1/p')
ensure "blk: the guest read back what it wrote through translated DMA" [ -n "$GSUM" ]
expect "blk: the disk image holds the guest's data" \
    "$(head -c 4194304 "$DISK" | sha256sum | cut -d' ' -f1)" "$GSUM"
expect "blk: the disk in a DMA domain" \
    "$(serial "$S" | grep -cE '^VM-PCI: 0000:00:06\.0 .* type=DMA$')" 1
vm_daemon_stop "$DPID"

# --- 4: a vhost-user device behind the IOMMU, lazy and strict ---------------------------------
# vublk_run NAME CMDLINE: a daemon, vhost-user-blk-confined for endpoint 48 and a guest that
# moves 4 MiB through the disk.
vublk_run() {
    local name=$1 cmdline=$2 D=$WORK/$1 S=$WORK/$1.serial ST=$WORK/$1.stats _
    mkdir -p "$D"
    daemon_start "$D"
    local dpid=$VM_DPID
    local disk=$D/vublk.img
    truncate -s 16M "$disk"
    rm -f "$D/blk.sock"
    # 06.0 is endpoint 48 in the VIOT and the daemon's endpoint set.
    RUST_LOG=vhost_user_blk_confined=debug setsid "$VM_TARGET/debug/vhost-user-blk-confined" \
        --socket-path "$D/blk.sock" --disk-file "$disk" \
        --translation-socket "$D/viommu.xlate" --endpoint 48 >>"$D/blk.log" 2>&1 &
    local bpid=$!
    VM_PIDS+=("$bpid")
    for _ in $(seq 100); do [ -S "$D/blk.sock" ] && break; sleep 0.05; done
    vm_on_hold() { vm_stats "$D/viommu.ctl" >"$ST"; }
    run "$name" "device:$D/viommu.sock:$D/viommu.xlate" "vm.blk=1 vm.hold=1 vm.fwfault=1 $cmdline" \
        -chardev "socket,id=vublk,path=$D/blk.sock" \
        -device vhost-user-blk-pci,chardev=vublk,num-queues=1,iommu_platform=on,disable-legacy=on,addr=06.0
    ensure "$name: guest checks passed" grep -q '^VM-RESULT: PASS' "$S"
    local sum
    sum=$(serial "$S" | sed -n 's/^VM: blk dma: .* sha256 \([0-9a-f]*\)$/\1/p')
    ensure "$name: the guest read back what it wrote through the backend" [ -n "$sum" ]
    expect "$name: the backend's disk file holds the guest's data" \
        "$(head -c 4194304 "$disk" | sha256sum | cut -d' ' -f1)" "$sum"
    expect "$name: the disk in a DMA domain" \
        "$(serial "$S" | grep -cE '^VM-PCI: 0000:00:06\.0 .* type=DMA(-FQ)?$')" 1
    local rings desc fwused fwfault
    rings=$(grep -o 'queue 0: rings at IOVAs .*' "$D/blk.log" | tail -n1)
    desc=$(sed -n 's/.*desc: \([0-9a-f]*\),.*/\1/p' <<<"$rings")
    # Linux's IOVAs start below 4 GiB, above the guest's RAM: no guest-physical address.
    ensure "$name: the backend got Linux's rings as IOVAs outside RAM (${rings:-none})" \
        [ "$((0x${desc:-0}))" -ge "$((VM_MEM << 20))" ]
    # SeaBIOS drives the disk at boot (rings at guest-physical addresses, the endpoint still in
    # bypass) and leaves it running. Linux attaches the endpoint to its DMA domain, then resets
    # the device: QEMU's vhost stop reads the used index of those firmware rings through the
    # IOMMU, which refuses it. QEMU's own virtio-iommu reports that read the same way.
    fwused=$(sed -n 's/.*queue 0: rings at IOVAs .* used: \([0-9a-f]*\) }.*/\1/p' "$D/blk.log" | head -n1)
    fwfault=$(printf 'fault from EP 48 at 0x%x [R]' "$((0x${fwused:-0} + 2))")
    expect "$name: the only fault is QEMU's read of the firmware's used index ($fwfault)" \
        "$(serial "$S" | sed -n 's/^VM-FAULT: .*page \(fault from EP .*\)$/\1/p' | sort -u)" "$fwfault"
    ensure "$name: the backend acknowledged QEMU's vhost IOTLB messages ($(grep -c 'IOTLB message' "$D/blk.log"))" \
        [ "$(grep -c 'IOTLB message' "$D/blk.log")" -gt 0 ]
    ensure "$name: QEMU and the backend both translated through the daemon ($(jq -c '.translation | [.accepted, .translate_ok]' "$ST"))" \
        [ "$(jq .translation.accepted "$ST")" -ge 2 -a "$(jq .translation.translate_ok "$ST")" -gt 0 ]
    expect "$name: non-OK statuses" "$(errors_of "$ST")" 0
    expect "$name: translation clients cut off or in protocol error" \
        "$(jq '.translation | .cut_off_timeout + .cut_off_backlog + .protocol_errors' "$ST")" 0
    kill "$bpid" 2>/dev/null || true
    wait "$bpid" 2>/dev/null || true
    vm_forget "$bpid"
    vm_daemon_stop "$dpid"
}
vublk_run vublk ""
vublk_run vublk-strict iommu.strict=1

# --- 7: ten kills under traffic (issue 17) ------------------------------------------------
# restart_loop SERIAL DIR N: once the guest's traffic runs, N times: wait 0.5-2.5 s, SIGKILL
# the daemon whose pid is in DIR/daemon.pid and start another on the same sockets and state
# file (run in the background: the pid file tells the caller which daemon is the last).
restart_loop() {
    local serial=$1 dir=$2 n=$3 i pid
    vm_wait_serial "$serial" '^VM-TRAFFIC-START' "$TMO" || return 0
    for i in $(seq "$n"); do
        sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.5 + 2 * rand() }')"
        pid=$(cat "$dir/daemon.pid")
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        daemon_start "$dir" --state-file "$dir/viommu.state"
        echo "$VM_DPID" >"$dir/daemon.pid"
        echo "kill $i: daemon $pid killed, $VM_DPID started" >>"$dir/restarts.log"
    done
}
RESTARTS=${RESTARTS:-10}
D=$WORK/d4
mkdir -p "$D"
daemon_start "$D" --state-file "$D/viommu.state"
echo "$VM_DPID" >"$D/daemon.pid"
# The loop's daemons are started in a background job: the cleanup finds the last one here.
VM_PID_FILES+=("$D/daemon.pid")
CTL=$D/viommu.ctl
vm_on_hold() { vm_stats "$CTL" >"$WORK/restarts.stats"; }
TDISK=$WORK/traffic.img
truncate -s 16M "$TDISK"
restart_loop "$WORK/restarts.serial" "$D" "$RESTARTS" &
LPID=$!
run restarts "device:$D/viommu.sock:$D/viommu.xlate" \
    "vm.nic=1 vm.traffic=$((RESTARTS * 3 + 10)) vm.hold=1" \
    -drive "file=$TDISK,if=none,id=disk0,format=raw,cache=none" \
    -device virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on,addr=06.0
wait "$LPID" 2>/dev/null || true
S=$WORK/restarts.serial
expect "restarts: daemons killed and restarted under traffic" \
    "$(grep -c '^kill ' "$D/restarts.log" 2>/dev/null || echo 0)" "$RESTARTS"
expect "restarts: each new daemon resumed the guest's state" \
    "$(grep -c 'state file .* resumed [1-9][0-9]* domains' "$D/daemon.log")" "$RESTARTS"
T=$(serial "$S" | sed -n 's/^VM-TRAFFIC: //p')
ensure "restarts: guest traffic across the kills (${T:-none})" \
    grep -qE '^disk [1-9][0-9]* rounds, 0 errors; arp [1-9][0-9]* exchanges, 0 failed$' <<<"$T"
ensure "restarts: guest checks passed (no iommu error or kernel warning in dmesg)" \
    grep -q '^VM-RESULT: PASS' "$S"
expect "restarts: non-OK statuses" "$(errors_of "$WORK/restarts.stats")" 0
log "restarts: $(grep -c 'connected again' "$S.qemu") translation reconnects; the last daemon's counters: $(jq -c '{map: .map.ok, unmap: .unmap.ok, translate: .translation.translate_ok}' "$WORK/restarts.stats")"
pid=$(cat "$D/daemon.pid")
kill "$pid" 2>/dev/null || true
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
: >"$D/daemon.pid"

# --- 8: live migration (issue 17) ----------------------------------------------------------
# migrate_loop SRC_SERIAL DST_SERIAL: once the guest's traffic runs, migrates the source QEMU
# to the destination (started with -incoming and -S), compares both daemons' dumps while the
# destination is still paused, lets it run and quits the source. Logs to $WORK/migrate.log.
migrate_loop() {
    local src=$1 dst=$2 st _
    vm_wait_serial "$src" '^VM-TRAFFIC-START' "$TMO" || { echo "no traffic" >>"$WORK/migrate.log"; return 0; }
    sleep "${MIGRATE_AFTER:-5}"
    vm_monitor "$src" "migrate_set_parameter max-bandwidth 1G"
    vm_monitor "$src" "migrate -d unix:$WORK/migrate.sock"
    for _ in $(seq $((TMO * 5))); do
        st=$(vm_hmp "$src" "info migrate")
        grep -qE '^Status:[[:space:]]+(completed|failed|cancelled)' <<<"$st" && break
        sleep 0.2
    done
    printf '%s\n' "$st" >>"$WORK/migrate.log"
    for _ in $(seq $((TMO * 5))); do
        grep -qx 'VM status: paused' <<<"$(vm_hmp "$dst" "info status")" && break
        sleep 0.2
    done
    vm_ctl "$DA/viommu.ctl" '{"cmd":"dump"}' | jq -cS .dump >"$WORK/migrate-src.dump"
    vm_ctl "$DB/viommu.ctl" '{"cmd":"dump"}' | jq -cS .dump >"$WORK/migrate-dst.dump"
    vm_stats "$DA/viommu.ctl" >"$WORK/migrate-src.stats"
    vm_stats "$DB/viommu.ctl" >"$WORK/migrate-loaded.stats"
    vm_monitor "$dst" cont
    echo "destination running" >>"$WORK/migrate.log"
    vm_monitor "$src" quit
    for _ in $(seq 50); do
        kill -0 "$(cat "$WORK/migrate-src.pid")" 2>/dev/null || break
        sleep 0.2
    done
    # The source daemon drops the guest's state when its frontend is gone.
    for _ in $(seq 50); do
        vm_ctl "$DA/viommu.ctl" '{"cmd":"dump"}' | jq -c .dump >"$WORK/migrate-released.dump"
        [ "$(jq '.domains | length' "$WORK/migrate-released.dump")" = 0 ] && break
        sleep 0.2
    done
}
DA=$WORK/d5
DB=$WORK/d6
mkdir -p "$DA" "$DB"
# With a state file, which keeps the guest across reconnects: the hand-off must still
# release it.
daemon_start "$DA" --state-file "$DA/viommu.state"
APID=$VM_DPID
daemon_start "$DB"
BPID=$VM_DPID
MDISK=$WORK/migrate.img
truncate -s 16M "$MDISK"
MIG_APPEND="vm.nic=1 vm.traffic=${MIGRATE_TRAFFIC:-30} vm.hold=1"
MIG_DISK=(-drive "file=$MDISK,if=none,id=disk0,format=raw,cache=none"
    -device virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on,addr=06.0)
vm_qemu_cmd "$TMO" "$WORK/migrate-src.serial" "device:$DA/viommu.sock:$DA/viommu.xlate" \
    "$MIG_APPEND" "${MIG_DISK[@]}"
"${VM_QEMU_CMD[@]}" >"$WORK/migrate-src.serial.qemu" 2>&1 </dev/null &
SRC_QPID=$!
VM_PIDS+=("$SRC_QPID")
echo "$SRC_QPID" >"$WORK/migrate-src.pid"
migrate_loop "$WORK/migrate-src.serial" "$WORK/migrate-dst.serial" &
LPID=$!
vm_on_hold() { vm_stats "$DB/viommu.ctl" >"$WORK/migrate-dst.stats"; }
run migrate-dst "device:$DB/viommu.sock:$DB/viommu.xlate" "$MIG_APPEND" "${MIG_DISK[@]}" \
    -incoming "unix:$WORK/migrate.sock" -S
wait "$LPID" 2>/dev/null || true
vm_stop "$SRC_QPID"
vm_forget "$SRC_QPID"
S=$WORK/migrate-dst.serial
MIG=$(grep -E '^(Status|Time)' "$WORK/migrate.log" | tr '\t\n' '  ' | tr -s ' ')
ensure "migrate: the source QEMU migrated to the destination (${MIG:-no status})" \
    grep -qE '^Status:[[:space:]]+completed' "$WORK/migrate.log"
ensure "migrate: the source daemon logged its guest-memory writes while the RAM was copied" \
    grep -q 'dirty-page logging on' "$DA/daemon.log"
ensure "migrate: the destination daemon loaded the source's state ($(grep -o 'device state: loaded .*' "$DB/daemon.log" | tail -n1))" \
    grep -q 'device state: loaded' "$DB/daemon.log"
# same_state: the source held domains and the destination holds exactly the same.
same_state() {
    [ "$(jq '.domains | length' "$WORK/migrate-src.dump" 2>/dev/null || echo 0)" -gt 0 ] &&
        cmp -s "$WORK/migrate-src.dump" "$WORK/migrate-dst.dump"
}
ensure "migrate: both daemons hold the same domains and mappings ($(jq '[.domains[].mappings | length] | add // 0' "$WORK/migrate-src.dump" 2>/dev/null) mappings in $(jq '.domains | length' "$WORK/migrate-src.dump" 2>/dev/null) domains)" \
    same_state
T=$(serial "$S" | sed -n 's/^VM-TRAFFIC: //p')
ensure "migrate: guest traffic across the switch (${T:-none})" \
    grep -qE '^disk [1-9][0-9]* rounds, 0 errors; arp [1-9][0-9]* exchanges, 0 failed$' <<<"$T"
ensure "migrate: guest checks passed on the destination (no iommu error or kernel warning)" \
    grep -q '^VM-RESULT: PASS' "$S"
MST=$WORK/migrate-dst.stats
ensure "migrate: the destination daemon answered the guest's requests ($(requests_of "$WORK/migrate-loaded.stats") -> $(requests_of "$MST"))" \
    [ "$(requests_of "$MST")" -gt "$(requests_of "$WORK/migrate-loaded.stats")" ]
ensure "migrate: the destination daemon translated the devices' DMA ($(translations_of "$WORK/migrate-loaded.stats") -> $(translations_of "$MST"))" \
    [ "$(translations_of "$MST")" -gt "$(translations_of "$WORK/migrate-loaded.stats")" ]
expect "migrate: non-OK statuses on the destination" "$(errors_of "$MST")" 0
expect "migrate: domains the source daemon still holds after the source QEMU quit" \
    "$(jq '.domains | length' "$WORK/migrate-released.dump" 2>/dev/null || echo '?')" 0
vm_daemon_stop "$APID"
vm_daemon_stop "$BPID"

# --- 6: speed, ours vs QEMU's virtio-iommu-pci ----------------------------------------------
MIB=${SPEED_MIB:-128}
SECS=${SPEED_SECS:-5}
SDISK=$WORK/speed.img
head -c "$((MIB << 20))" /dev/urandom >"$SDISK"
SPEED_APPEND="vm.nic=1 vm.blkread=$MIB vm.flood=$SECS vm.hold=1"
SPEED_DISK=(-drive "file=$SDISK,if=none,id=disk0,format=raw,cache=none,readonly=on"
    -device virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on,addr=06.0)
# mark_stats SERIAL CTL PREFIX: the daemon's counters at each VM-MARK of the guest.
mark_stats() {
    local m _
    for m in blk-read nic-flood done; do
        for _ in $(seq $((TMO * 10))); do
            grep -q "^VM-MARK: $m" "$1" 2>/dev/null && break
            sleep 0.1
        done
        vm_stats "$2" >"$3.$m.stats" || return 0
    done
}
# delta FROM TO FIELD: a counter's growth between two stats files.
delta() { jq -n --slurpfile a "$1" --slurpfile b "$2" "\$b[0].$3 - \$a[0].$3"; }
# speed_of SERIAL blk|nic: the guest's MB/s or packets/s.
speed_of() {
    case $2 in
        blk) serial "$1" | sed -n 's/^VM-SPEED: blk-read .*: \([0-9.]*\) MB\/s$/\1/p' ;;
        nic) serial "$1" | sed -n 's/^VM-SPEED: nic \([0-9]*\) packets\/s$/\1/p' ;;
    esac | head -n1
}
# The daemon as it would be deployed: release build, info logging (debug logs every request).
# Built like vm-guest-tool (static, target/guest), so the two share their dependencies.
log "building the release vhost-device-iommu for the speed runs (target dir target/guest)"
(cd "$VM_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p vhost-device-iommu --bin vhost-device-iommu \
    --target-dir "$VM_ROOT/target/guest") >&2
# Nothing dirty in the host's cache before either run: writeback of the image (the first
# O_DIRECT read of a dirty page writes it back) or of a fresh build (CI) would otherwise
# compete with whichever device runs first, for the disk and for a core.
sync
D=$WORK/d3
mkdir -p "$D"
VM_DAEMON=$VM_ROOT/target/guest/x86_64-unknown-linux-gnu/release/vhost-device-iommu \
    VM_RUST_LOG=vhost_device_iommu=info daemon_start "$D"
DPID=$VM_DPID
CTL=$D/viommu.ctl
vm_on_hold() { :; }
mark_stats "$WORK/speed-ours.serial" "$CTL" "$WORK/speed" &
MPID=$!
run speed-ours "device:$D/viommu.sock:$D/viommu.xlate" "$SPEED_APPEND" "${SPEED_DISK[@]}"
kill "$MPID" 2>/dev/null || true
wait "$MPID" 2>/dev/null || true
vm_daemon_stop "$DPID"
run speed-qemu builtin-platform "$SPEED_APPEND" "${SPEED_DISK[@]}"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
for side in ours qemu; do
    S=$WORK/speed-$side.serial
    ensure "speed ($side): guest checks passed" grep -q '^VM-RESULT: PASS' "$S"
    serial "$S" | sed -n "s/^VM-SPEED: /speed ($side): /p" >&2
done
BLK_ours=$(speed_of "$WORK/speed-ours.serial" blk)
BLK_qemu=$(speed_of "$WORK/speed-qemu.serial" blk)
PPS_ours=$(speed_of "$WORK/speed-ours.serial" nic)
PPS_qemu=$(speed_of "$WORK/speed-qemu.serial" nic)
ensure "speed: both sides measured (blk ${BLK_ours:-?}/${BLK_qemu:-?} MB/s, nic ${PPS_ours:-?}/${PPS_qemu:-?} packets/s)" \
    [ -n "$BLK_ours" -a -n "$BLK_qemu" -a -n "$PPS_ours" -a -n "$PPS_qemu" ]
target() { awk -v r="$1" 'BEGIN { print (r != "n/a" && r >= 0.8) ? "meets the 0.8 target" : "BELOW the 0.8 target" }'; }
R=$(ratio "${BLK_ours:-0}" "${BLK_qemu:-0}")
log "speed: virtio-blk sequential read: ours ${BLK_ours:-?} MB/s, QEMU's virtio-iommu-pci ${BLK_qemu:-?} MB/s: ratio $R ($(target "$R"))"
R=$(ratio "${PPS_ours:-0}" "${PPS_qemu:-0}")
log "speed: NIC frames: ours ${PPS_ours:-?} packets/s, QEMU's virtio-iommu-pci ${PPS_qemu:-?} packets/s: ratio $R ($(target "$R"))"
# Where our time goes: requests and socket round trips per MiB read and per frame received.
P=$WORK/speed
if [ -s "$P.blk-read.stats" ] && [ -s "$P.nic-flood.stats" ] && [ -s "$P.done.stats" ]; then
    frames=$(serial "$WORK/speed-ours.serial" | sed -n 's/^VM-SPEED: nic .* \([0-9]*\) received in .*/\1/p' | awk '{ n += $1 } END { print n + 0 }')
    for ph in "blk-read nic-flood $MIB MiB" "nic-flood done ${frames:-0} frames"; do
        read -r a b n unit <<<"$ph"
        log "speed: ours, $a phase ($n $unit): $(for f in MAP:map.ok UNMAP:unmap.ok \
            TRANSLATE:translation.translate_ok INVALIDATE:translation.invalidates; do
            printf '%s %s ' "${f%%:*}" "$(delta "$P.$a.stats" "$P.$b.stats" "${f#*:}")"; done)"
    done
fi

log "$passed checks passed, $failed failed, in $((SECONDS - T0)) s (logs: $WORK)"
[ "$failed" = 0 ]
