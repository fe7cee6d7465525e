#!/usr/bin/env bash
# The no_std guest driver in a freestanding kernel (guest-kernel/): builds the kernel for bare
# metal (the real no_std check: core + alloc only, no std anywhere in its graph), then boots it
# under QEMU (-kernel, PVH entry; TCG, q35, two `edu` functions as endpoints) twice:
#   1. against QEMU's own -device virtio-iommu-pci (the reference);
#   2. against vhost-device-iommu through vhost-user-test-device-pci, the daemon started here
#      with QEMU's feature set and geometry (--mmio, 39-bit input range, bus 0's endpoint IDs),
#      a mapping limit of 1024 (the S_NOMEM check) and the vSVA extensions (--pasid-bits 16).
#      The kernel asks for host-side DMA on its serial log (KERNEL-HOST lines); this script
#      sends each to the daemon's control socket and checks the reply (HOST-CHECK lines).
#   3. (blk=1) the confined blk backend: vhost-device-iommu as in 2 (plus --translation-socket)
#      and vhost-user-blk-confined behind a second vhost-user-test-device-pci (virtio-id 2, at
#      06.0: endpoint 48) on a 64-sector disk file, each sector filled with its number. The
#      kernel drives it with virtio-drivers' VirtIOBlk; afterwards this script checks the disk
#      file holds exactly the kernel's writes and the daemon's translation counters.
# Judged from the serial logs: every `KERNEL: PASS/FAIL` line, the final
# `KERNEL-RESULT: N passed, 0 failed`, QEMU's exit status 33 (isa-debug-exit, "passed") and
# every host check. Prints both devices' timing lines (guest TSC) and their ratio.
# Without a cached QEMU (scripts/build-qemu.sh) the boots are skipped with a message; the
# kernel is still built. Logs: $VIRTIO_IOMMU_CACHE/baremetal/.
# Env: BM_TIMEOUT (s per VM, default 120), VERBOSE=1 (dump serial logs), BM_DAEMON (a prebuilt
#      daemon), BM_BLK (a prebuilt blk backend), BM_ONLY=qemu|daemon|blk (one run only),
#      BM_BUILD_QEMU=1 (build QEMU if missing), BM_RUST_LOG / BM_BLK_RUST_LOG (the daemon's and
#      the blk backend's RUST_LOG).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
ROOT=$(cd "$HERE/.." && pwd)
W=$VIRTIO_IOMMU_CACHE/baremetal
TMO=${BM_TIMEOUT:-120}
mkdir -p "$W"

# 1. The kernel. Built from its own directory so that its .cargo/config.toml (bare-metal
#    flags) applies; its target directory lives under the workspace's.
log "building the bare-metal kernel (guest-kernel/, target dir target/guest-kernel)"
(cd "$ROOT/guest-kernel" && cargo build -q --release --locked \
    --target-dir "$ROOT/target/guest-kernel") >&2
KERNEL=$ROOT/target/guest-kernel/x86_64-unknown-linux-gnu/release/guest-kernel
[ -f "$KERNEL" ] || die "no kernel at $KERNEL"
if grep -aq 'GLIBC_\|libc\.so' "$KERNEL"; then
    die "the kernel references libc"
fi

QEMU=$("$HERE/build-qemu.sh" --cached || true)
if [ -z "$QEMU" ] && [ "${BM_BUILD_QEMU:-0}" = 1 ]; then
    QEMU=$("$HERE/build-qemu.sh")
fi
if [ -z "$QEMU" ]; then
    log "SKIP: the kernel builds, but no QEMU 10.2.2 is cached: run scripts/build-qemu.sh (or BM_BUILD_QEMU=1) to boot it"
    exit 0
fi

with_lock baremetal
apt_ensure socat jq
DAEMON=${BM_DAEMON:-}
if [ -z "$DAEMON" ]; then
    log "building vhost-device-iommu"
    (cd "$ROOT" && cargo build -q -p vhost-device-iommu --bin vhost-device-iommu) >&2
    DAEMON=${CARGO_TARGET_DIR:-$ROOT/target}/debug/vhost-device-iommu
fi
[ -x "$DAEMON" ] || die "no daemon at $DAEMON"
BLK=${BM_BLK:-}
if [ -z "$BLK" ] && { [ -z "${BM_ONLY:-}" ] || [ "$BM_ONLY" = blk ]; }; then
    log "building vhost-user-blk-confined"
    (cd "$ROOT" && cargo build -q -p vhost-user-blk-confined --bin vhost-user-blk-confined) >&2
    BLK=${CARGO_TARGET_DIR:-$ROOT/target}/debug/vhost-user-blk-confined
fi

DPID='' QPID='' BPID=''
BG_PIDS=()
cleanup() {
    local p
    for p in "${BG_PIDS[@]}" $QPID $DPID $BPID; do kill "$p" 2>/dev/null || true; done
    for p in "${BG_PIDS[@]}" $QPID $DPID $BPID; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# boot NAME SERIAL_LOG CMDLINE [QEMU args...]: boots the kernel in the background (QPID).
boot() {
    local name=$1 serial=$2 append=$3; shift 3
    rm -f "$serial"
    log "[$name] booting the kernel (TCG), serial log $serial"
    timeout --kill-after=5 "$TMO" "$HERE/qemu.sh" \
        -accel tcg -M q35 -m 512 -smp 1 -nodefaults -display none -no-reboot \
        -serial "file:$serial" -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -kernel "$KERNEL" -append "$append" \
        -device edu,addr=04.0 -device edu,addr=05.0 \
        "$@" </dev/null >"$serial.qemu" 2>&1 &
    QPID=$!
}

# check_reply ID EXPECT REPLY: judges one control-socket reply; prints a HOST-CHECK line.
check_reply() {
    local id=$1 want=$2 reply=$3 filter
    case $want in
        ok) filter='.ok == true and (has("fault") | not)' ;;
        fault) filter='.ok == true and has("fault")' ;;
        data:*) filter=".ok == true and .data == \"${want#data:}\"" ;;
        *) echo "HOST-CHECK: FAIL $id: unknown expectation $want"; return 1 ;;
    esac
    if [ -n "$reply" ] && jq -e "$filter" >/dev/null 2>&1 <<<"$reply"; then
        echo "HOST-CHECK: PASS $id ($want) $(jq -c 'del(.data)' <<<"$reply")"
    else
        echo "HOST-CHECK: FAIL $id: want $want, got ${reply:-no reply}"; return 1
    fi
}

# host_request LINE: sends one KERNEL-HOST request to the daemon's control socket, in the
# background if asked (its reply comes after the guest answered a page request).
host_ok=1 host_done=0
host_request() {
    local line=$1 id want bg cmd
    id=${line#*id=}; id=${id%% *}
    want=${line#* expect=}; want=${want%% *}
    bg=${line#* bg=}; bg=${bg%% *}
    cmd=${line#* cmd=}
    if [ "$bg" = 1 ]; then
        (printf '%s\n' "$cmd" | socat -t 60 - "UNIX-CONNECT:$W/daemon.ctl" >"$W/host-$id.reply" 2>&1 \
            || true; echo "$want" >"$W/host-$id.want") &
        BG_PIDS+=($!)
        echo "HOST: $id sent in the background: $cmd"
        return 0
    fi
    local reply
    reply=$(printf '%s\n' "$cmd" | socat -t 30 - "UNIX-CONNECT:$W/daemon.ctl" 2>&1 || true)
    check_reply "$id" "$want" "$reply" || host_ok=0
}

# judge NAME SERIAL_LOG QEMU_RC: prints the kernel's lines; returns 1 unless the run passed.
judge() {
    local name=$1 serial=$2 rc=$3 ok=0
    tr -d '\r' <"$serial" | grep -aE '^KERNEL' | grep -av '^KERNEL-HOST' | sed "s/^/[$name] /" >&2 || true
    [ "${VERBOSE:-0}" = 1 ] && sed "s/^/[$name serial] /" "$serial" >&2
    if [ "$rc" -ne 33 ]; then
        log "[$name] QEMU exited with $rc (33: passed, 35: failed, 124: timeout)"
        tail -n 20 "$serial.qemu" >&2; ok=1
    fi
    local res
    res=$(tr -d '\r' <"$serial" | grep -a '^KERNEL-RESULT:' | tail -n1)
    if ! grep -qE '^KERNEL-RESULT: [1-9][0-9]* passed, 0 failed$' <<<"$res"; then
        log "[$name] result: ${res:-none}"; ok=1
    fi
    [ $ok = 0 ] && log "[$name] PASS: ${res#KERNEL-RESULT: }"
    return $ok
}

# wanted RUN: whether BM_ONLY allows this run.
wanted() { [ -z "${BM_ONLY:-}" ] || [ "$BM_ONLY" = "$1" ]; }

fail=0
start=$SECONDS

# 2. QEMU's own virtio-iommu-pci.
if wanted qemu; then
    LOG=$W/qemu.serial.log
    boot qemu "$LOG" "device=qemu" -device virtio-iommu-pci,addr=03.0
    rc=0; wait "$QPID" || rc=$?; QPID=
    judge qemu "$LOG" "$rc" || fail=1
fi

# 3. vhost-device-iommu through vhost-user-test-device-pci.
if wanted daemon; then
    LOG=$W/daemon.serial.log
    rm -f "$W/daemon.sock" "$W/daemon.ctl" "$W/daemon.log" "$W"/host-*.reply "$W"/host-*.want
    RUST_LOG=${BM_RUST_LOG:-vhost_device_iommu=info} "$DAEMON" \
        --socket-path "$W/daemon.sock" --control-socket "$W/daemon.ctl" \
        --mmio --endpoints 0-0xff --input-range 0-0x7fffffffff --max-mappings 1024 \
        --pasid-bits 16 >"$W/daemon.log" 2>&1 &
    DPID=$!
    for _ in $(seq 100); do
        [ -S "$W/daemon.sock" ] && [ -S "$W/daemon.ctl" ] && break
        kill -0 "$DPID" 2>/dev/null || { cat "$W/daemon.log" >&2; die "daemon exited"; }
        sleep 0.05
    done
    [ -S "$W/daemon.sock" ] || die "daemon did not create its sockets"
    boot daemon "$LOG" "device=daemon sva=1" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c,path=$W/daemon.sock" \
        -device vhost-user-test-device-pci,chardev=c,virtio-id=23,num_vqs=2,config_size=40,addr=03.0
    : >"$W/host-check.log"
    # Serve the kernel's host requests, in order, while it runs.
    while :; do
        alive=0; kill -0 "$QPID" 2>/dev/null && alive=1
        if [ -f "$LOG" ]; then
            mapfile -t reqs < <(tr -d '\r' <"$LOG" | grep -a '^KERNEL-HOST ' || true)
            while [ "$host_done" -lt "${#reqs[@]}" ]; do
                host_request "${reqs[$host_done]}" >>"$W/host-check.log"
                host_done=$((host_done + 1))
            done
        fi
        [ $alive = 1 ] || break
        sleep 0.05
    done
    rc=0; wait "$QPID" || rc=$?; QPID=
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    BG_PIDS=()
    for f in "$W"/host-*.want; do
        [ -f "$f" ] || continue
        id=${f##*/host-}; id=${id%.want}
        check_reply "$id" "$(cat "$f")" "$(cat "$W/host-$id.reply" 2>/dev/null)" \
            >>"$W/host-check.log" || host_ok=0
    done
    sed 's/^/[daemon] /' "$W/host-check.log" >&2
    judge daemon "$LOG" "$rc" || fail=1
    npass=$(grep -c '^HOST-CHECK: PASS' "$W/host-check.log" || true)
    if [ "$host_ok" != 1 ] || [ "$host_done" = 0 ] || [ "$npass" != "$host_done" ]; then
        log "[daemon] host checks: $npass of $host_done passed"; fail=1
    else
        log "[daemon] host checks: all $host_done passed"
    fi
    kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; DPID=
    [ $fail = 0 ] || tail -n 20 "$W/daemon.log" >&2
fi

# start_daemon LOG_NAME ARGS...: starts vhost-device-iommu (DPID) as QEMU's device would have
# it (--mmio, 39-bit input range, bus 0's endpoint IDs) and waits for its sockets.
start_daemon() {
    local name=$1; shift
    rm -f "$W/$name.sock" "$W/$name.ctl" "$W/$name.log"
    RUST_LOG=${BM_RUST_LOG:-vhost_device_iommu=info} "$DAEMON" \
        --socket-path "$W/$name.sock" --control-socket "$W/$name.ctl" \
        --mmio --endpoints 0-0xff --input-range 0-0x7fffffffff "$@" >"$W/$name.log" 2>&1 &
    DPID=$!
    for _ in $(seq 100); do
        [ -S "$W/$name.sock" ] && [ -S "$W/$name.ctl" ] && break
        kill -0 "$DPID" 2>/dev/null || { cat "$W/$name.log" >&2; die "daemon exited"; }
        sleep 0.05
    done
    [ -S "$W/$name.sock" ] || die "daemon did not create its sockets"
}

# sectors FIRST LAST: the pattern disk's sectors, each 512 bytes of its own number (mod 256).
sectors() {
    local s
    for s in $(seq "$1" "$2"); do
        head -c 512 /dev/zero | tr '\0' "\\$(printf %03o $((s % 256)))"
    done
}
# payload LEN SEED: the bytes the kernel writes (checks/blk.rs, `payload`).
payload() {
    awk -v n="$1" -v seed="$2" 'BEGIN { for (i = 0; i < n; i++) {
        v = ((i % 256) * 7 + seed) % 256; if (v < 128) v += 128; printf "%02x", v } }' | xxd -r -p
}

# 4. The confined blk backend behind a second generic vhost-user device.
if wanted blk; then
    [ -x "$BLK" ] || die "no blk backend at $BLK"
    LOG=$W/blk.serial.log
    BLK_EP=48 # 00:06.0
    sectors 0 63 >"$W/blk.img"
    start_daemon blk-iommu --translation-socket "$W/blk-iommu.xlate"
    rm -f "$W/blk.sock"
    RUST_LOG=${BM_BLK_RUST_LOG:-info} "$BLK" --socket-path "$W/blk.sock" --disk-file "$W/blk.img" \
        --translation-socket "$W/blk-iommu.xlate" --endpoint "$BLK_EP" >"$W/blk.log" 2>&1 &
    BPID=$!
    for _ in $(seq 100); do
        [ -S "$W/blk.sock" ] && break
        kill -0 "$BPID" 2>/dev/null || { cat "$W/blk.log" >&2; die "blk backend exited"; }
        sleep 0.05
    done
    [ -S "$W/blk.sock" ] || die "the blk backend did not create its socket"
    boot blk "$LOG" "device=daemon blk=1" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c,path=$W/blk-iommu.sock" \
        -device vhost-user-test-device-pci,chardev=c,virtio-id=23,num_vqs=2,config_size=40,addr=03.0 \
        -chardev "socket,id=b,path=$W/blk.sock" \
        -device vhost-user-test-device-pci,chardev=b,virtio-id=2,num_vqs=1,config_size=24,addr=06.0
    rc=0; wait "$QPID" || rc=$?; QPID=
    judge blk "$LOG" "$rc" || fail=1
    # The disk holds the kernel's writes (sector 3, sectors 10-12) and nothing else changed.
    { sectors 0 2; payload 512 4; sectors 4 9; payload 1536 9; sectors 13 63; } >"$W/blk.expected"
    if cmp "$W/blk.img" "$W/blk.expected" >&2; then
        log "[blk] HOST-CHECK: PASS the disk file holds the kernel's writes, in their sectors"
    else
        log "[blk] HOST-CHECK: FAIL the disk file differs from the expected one"; fail=1
    fi
    # Every access went through the daemon: one client, the two faults, every invalidation
    # acknowledged.
    stats=$(printf '{"cmd":"stats"}\n' | socat -t 10 - "UNIX-CONNECT:$W/blk-iommu.ctl" 2>&1 || true)
    want='.stats.translation | .accepted >= 1 and .translate_ok >= 4 and .translate_fault >= 2
        and .invalidates >= 1 and .acks == .invalidates and .cut_off_timeout == 0'
    if jq -e "$want" >/dev/null 2>&1 <<<"$stats"; then
        log "[blk] HOST-CHECK: PASS translation counters $(jq -c '.stats.translation' <<<"$stats")"
    else
        log "[blk] HOST-CHECK: FAIL translation counters: ${stats:-no reply}"; fail=1
    fi
    kill "$BPID" "$DPID" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; BPID='' DPID=''
    [ $fail = 0 ] || { tail -n 20 "$W/blk.log" >&2; tail -n 20 "$W/blk-iommu.log" >&2; }
fi

# 5. Timing: both devices under the same TCG, measured by the guest's TSC.
timing() { tr -d '\r' <"$W/$1.serial.log" 2>/dev/null | grep -a '^KERNEL-TIMING' | tail -n1; }
field() { sed -n "s/.* $2=\([0-9]*\).*/\1/p" <<<"$1"; }
tq=$(timing qemu) td=$(timing daemon)
if [ -z "${BM_ONLY:-}" ] && [ -n "$tq" ] && [ -n "$td" ]; then
    build=$(basename "$(dirname "$DAEMON")")
    awk -v build="$build" -v q1="$(field "$tq" map1_ns)" -v d1="$(field "$td" map1_ns)" \
        -v qb="$(field "$tq" batch64_ns)" -v db="$(field "$td" batch64_ns)" 'BEGIN {
        printf "timing (guest TSC, TCG, %s daemon): one synchronous MAP: QEMU %.1f us, daemon %.1f us (%.1fx); 64-MAP batch: QEMU %.1f us, daemon %.1f us (%.1fx)\n",
            build, q1 / 1000, d1 / 1000, d1 / q1, qb / 1000, db / 1000, db / qb }' | tee "$W/timing.txt" >&2
fi

log "runs took $((SECONDS - start)) s"
[ $fail = 0 ] || die "bare-metal kernel test failed (logs in $W)"
log "PASS: the no_std driver in a bare-metal kernel against QEMU's virtio-iommu-pci and vhost-device-iommu, and a blk backend confined by it"
