# shellcheck shell=bash
# Helpers shared by run-vm.sh and test-vm.sh: build the daemon and mkviot, start and stop
# daemons, talk to their control socket, build the guest initramfs and boot QEMU (TCG, q35)
# with our vhost-user virtio-iommu or with QEMU's own virtio-iommu-pci.
# Sourced after ../common.sh; expects $HERE (the scripts/ directory). Never executed.

VM_ROOT=$(cd "$HERE/.." && pwd)
VM_TARGET=${CARGO_TARGET_DIR:-$VM_ROOT/target}
VM_DAEMON=$VM_TARGET/debug/vhost-device-iommu
VM_MKVIOT=$VM_TARGET/debug/mkviot
VM_MEM=${VM_MEM:-512}
# Topology: our IOMMU at 00:03.0, a virtio-net at 00:04.0 and an e1000e at 00:05.0 on one hub.
# The VIOT puts all of bus 0 behind the IOMMU with endpoint ID = BDF.
VM_IOMMU_ADDR=03.0
VM_NET_ADDR=04.0
VM_E1000E_ADDR=05.0
VM_PIDS=()
VM_PID_FILES=()

# Builds the daemon and mkviot (debug profile, shared target dir).
vm_build() {
    log "building vhost-device-iommu and mkviot"
    (cd "$VM_ROOT" && cargo build -q -p vhost-device-iommu --bins) >&2
}

# vm_viot FILE: the VIOT body for the topology above.
vm_viot() {
    "$VM_MKVIOT" --iommu "00:$VM_IOMMU_ADDR" --pci-range 00:00.0-00:1f.7 --body --out "$1"
}

# vm_initramfs OUT [mkinitramfs options...]: the guest initramfs with scripts/vm/guest.sh as
# its test script.
vm_initramfs() {
    local out=$1; shift
    "$HERE/mkinitramfs.sh" "$out" --init-script "$HERE/vm/guest.sh" "$@"
}

# vm_guest_tool: builds guest-programs' vm-guest-tool (static, release, target/guest) and
# prints its path.
vm_guest_tool() {
    log "building the static vm-guest-tool (target dir target/guest)"
    (cd "$VM_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
        --target x86_64-unknown-linux-gnu -p virtio-iommu-guest-programs --bin vm-guest-tool \
        --target-dir "$VM_ROOT/target/guest") >&2
    echo "$VM_ROOT/target/guest/x86_64-unknown-linux-gnu/release/vm-guest-tool"
}

# vm_daemon_start DIR [daemon options...]: starts a daemon with DIR/viommu.sock and
# DIR/viommu.ctl, logging to DIR/daemon.log; waits until both sockets exist. Sets VM_DPID.
# The daemon gets a session of its own (setsid: no fork, so $! is the daemon): a Ctrl-C on
# the terminal must not kill it before QEMU, whose guest would hang on the dead backend.
vm_daemon_start() {
    local dir=$1; shift
    rm -f "$dir/viommu.sock" "$dir/viommu.ctl"
    RUST_LOG=${VM_RUST_LOG:-vhost_device_iommu=debug} setsid "$VM_DAEMON" \
        --socket-path "$dir/viommu.sock" --control-socket "$dir/viommu.ctl" "$@" \
        >>"$dir/daemon.log" 2>&1 &
    VM_DPID=$!
    VM_PIDS+=("$VM_DPID")
    local _
    for _ in $(seq 100); do
        [ -S "$dir/viommu.sock" ] && [ -S "$dir/viommu.ctl" ] && return 0
        kill -0 "$VM_DPID" 2>/dev/null || { cat "$dir/daemon.log" >&2; die "daemon exited"; }
        sleep 0.05
    done
    die "daemon did not create its sockets"
}

# vm_forget PID: drops a reaped PID from the cleanup list (its number may be reused).
vm_forget() {
    local p keep=()
    for p in "${VM_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    VM_PIDS=("${keep[@]}")
}

# vm_daemon_stop PID: stops one daemon started by vm_daemon_start.
vm_daemon_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    vm_forget "$1"
}

# vm_stop PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
vm_stop() {
    local _
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Stops every QEMU and daemon this script started, newest first (each QEMU before the daemon
# it uses: a guest whose backend dies first hangs), then the daemons named in the files of
# VM_PID_FILES (started by background jobs, whose VM_PIDS the script never sees), for the
# EXIT and signal traps.
vm_cleanup() {
    local i f
    for ((i = ${#VM_PIDS[@]} - 1; i >= 0; i--)); do
        vm_stop "${VM_PIDS[i]}"
    done
    VM_PIDS=()
    for f in "${VM_PID_FILES[@]}"; do
        [ -s "$f" ] && vm_stop "$(cat "$f")"
    done
    VM_PID_FILES=()
}

# vm_ctl CTL_SOCKET JSON: one control request, prints the one-line reply.
vm_ctl() {
    printf '%s\n' "$2" | socat -t 5 - "UNIX-CONNECT:$1"
}

# vm_stats CTL_SOCKET: the `stats` object.
vm_stats() {
    vm_ctl "$1" '{"cmd":"stats"}' | jq -ce '.stats'
}

# vm_qemu_cmd TIMEOUT SERIAL_LOG KIND KERNEL_CMDLINE_EXTRA [extra QEMU args...]
# Sets VM_QEMU_CMD to the command that boots the guest kernel with the initramfs in $VM_INITRD
# under `timeout` (exit status 124 on timeout), console in SERIAL_LOG, monitor on
# SERIAL_LOG.mon. KIND is `vhost:SOCKET:VIOT` (our daemon behind the generic
# vhost-user-test-device-pci, VIOT by -acpitable), `device:SOCKET:TRANSLATION_SOCKET` (our
# daemon behind the vhost-user-iommu-pci of qemu/patches/: QEMU translates DMA through the
# daemon and builds the VIOT; the vhost-user chardev reconnects every $VM_RECONNECT_MS ms,
# default 200; $VM_IOMMU_PROPS, if set, adds properties to the device), `builtin` (QEMU's virtio-iommu-pci) or `builtin-platform` (the same, with the
# memory backend and the virtio-net options of `device:`, so that only the IOMMU differs).
# SERIAL_LOG `-` means interactive on this terminal, without timeout.
vm_qemu_cmd() {
    local tmo=$1 serial=$2 kind=$3 append=$4; shift 4
    local iommu=() vnet_opts=
    case "$kind" in
        vhost:*)
            local rest=${kind#vhost:}
            local sock=${rest%%:*} viot=${rest#*:}
            iommu=(-object "memory-backend-memfd,id=mem,size=${VM_MEM}M,share=on"
                -machine memory-backend=mem
                -chardev "socket,id=viommu,path=$sock"
                -device "vhost-user-test-device-pci,chardev=viommu,virtio-id=23,num_vqs=2,config_size=40,vq_size=256,addr=$VM_IOMMU_ADDR"
                -acpitable "sig=VIOT,rev=0,oem_id=VIOMMU,oem_table_id=VIOMMUTB,data=$viot")
            ;;
        device:*)
            local rest=${kind#device:}
            local sock=${rest%%:*} xsock=${rest#*:}
            iommu=(-object "memory-backend-memfd,id=mem,size=${VM_MEM}M,share=on"
                -machine memory-backend=mem
                -chardev "socket,id=viommu,path=$sock,reconnect-ms=${VM_RECONNECT_MS:-200}"
                -device "vhost-user-iommu-pci,chardev=viommu,translation=$xsock,addr=$VM_IOMMU_ADDR${VM_IOMMU_PROPS:+,$VM_IOMMU_PROPS}")
            # A virtio device DMAs through the IOMMU only with VIRTIO_F_ACCESS_PLATFORM.
            vnet_opts=,iommu_platform=on,disable-legacy=on
            ;;
        builtin)
            iommu=(-device "virtio-iommu-pci,addr=$VM_IOMMU_ADDR")
            ;;
        builtin-platform)
            iommu=(-object "memory-backend-memfd,id=mem,size=${VM_MEM}M,share=on"
                -machine memory-backend=mem
                -device "virtio-iommu-pci,addr=$VM_IOMMU_ADDR")
            vnet_opts=,iommu_platform=on,disable-legacy=on
            ;;
        *) die "vm_qemu: unknown kind $kind" ;;
    esac
    local qemu=(timeout --kill-after=5 "$tmo" "$HERE/qemu.sh") console=(-serial "file:$serial")
    local monitor=(-monitor "unix:$serial.mon,server=on,wait=off")
    if [ "$serial" = - ]; then
        # Interactive: the console (and the monitor, Ctrl-A c) on this terminal, no timeout.
        qemu=("$HERE/qemu.sh") console=(-serial mon:stdio) monitor=(-monitor none)
    else
        rm -f "$serial" "$serial.mon"
    fi
    # shellcheck disable=SC2054 # the commas belong to QEMU option values
    VM_QEMU_CMD=("${qemu[@]}"
        -accel tcg -M q35 -m "$VM_MEM" -smp 1 -nodefaults -display none \
        "${console[@]}" "${monitor[@]}" \
        -kernel "$VM_GUEST/vmlinuz" -initrd "$VM_INITRD" \
        -append "console=ttyS0 panic=-1 loglevel=4 $append" \
        "${iommu[@]}" \
        -netdev hubport,id=p0,hubid=0 -netdev hubport,id=p1,hubid=0 \
        -device "virtio-net-pci,netdev=p0,mac=52:54:00:00:00:01,addr=$VM_NET_ADDR$vnet_opts" \
        -device "e1000e,netdev=p1,mac=52:54:00:00:00:02,addr=$VM_E1000E_ADDR" \
        "$@")
}

# vm_qemu ARGS...: vm_qemu_cmd ARGS, then runs it in the foreground.
vm_qemu() {
    vm_qemu_cmd "$@"
    "${VM_QEMU_CMD[@]}"
}

# vm_hmp SERIAL_LOG COMMAND: one HMP command to the QEMU started with SERIAL_LOG; prints its
# output.
vm_hmp() {
    printf '%s\n' "$2" | socat -t 1 - "UNIX-CONNECT:$1.mon" 2>/dev/null | tr -d '\r'
}

# vm_monitor SERIAL_LOG COMMAND: vm_hmp, output dropped.
vm_monitor() {
    vm_hmp "$1" "$2" >/dev/null
}

# vm_wait_serial SERIAL_LOG REGEX SECONDS: waits until a serial log line matches.
vm_wait_serial() {
    local _
    for _ in $(seq $(($3 * 5))); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# vm_boot TIMEOUT SERIAL_LOG KIND KERNEL_CMDLINE_EXTRA [extra QEMU args...]
# vm_qemu in the background. If the guest prints "VM-HOLD" (vm.hold=1), runs the shell
# function `vm_on_hold` (if defined) while the guest is still up, then quits QEMU through its
# monitor. If VM_WATCH_PID is set and that process (the guest's daemon) exits, stops QEMU at
# once rather than at the timeout. Returns QEMU's exit status; QEMU's own output goes to
# SERIAL_LOG.qemu.
vm_boot() {
    local serial=$2
    rm -f "$serial"
    vm_qemu_cmd "$@"
    # `timeout` itself is the background job, in a process group of its own (so a terminal's
    # Ctrl-C does not reach QEMU): the traps' SIGTERM reaches QEMU through it.
    "${VM_QEMU_CMD[@]}" >"$serial.qemu" 2>&1 </dev/null &
    local qpid=$! rc=0 held=0
    VM_PIDS+=("$qpid")
    while kill -0 "$qpid" 2>/dev/null; do
        if [ $held = 0 ] && grep -q '^VM-HOLD' "$serial" 2>/dev/null; then
            held=1
            if declare -F vm_on_hold >/dev/null; then vm_on_hold || true; fi
            printf 'quit\n' | socat -t 2 - "UNIX-CONNECT:$serial.mon" >/dev/null 2>&1 || true
        fi
        if [ -n "${VM_WATCH_PID:-}" ] && ! kill -0 "$VM_WATCH_PID" 2>/dev/null; then
            log "the daemon (pid $VM_WATCH_PID) exited: stopping QEMU"
            kill "$qpid" 2>/dev/null || true
            VM_WATCH_PID=
        fi
        sleep 0.2
    done
    wait "$qpid" || rc=$?
    vm_forget "$qpid"
    return $rc
}
