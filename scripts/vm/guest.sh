#!/bin/sh
# Guest side of run-vm.sh / test-vm.sh (busybox sh, run as /test.sh by the initramfs /init).
# Prints what the host checks, one fact per line, each prefixed with "VM":
#   VM-DMESG: the kernel's iommu / virtio lines        VM-GROUP: N: devices of group N
#   VM-PCI: BDF ids driver= group=                     VM: free-form facts
#   VM-RESULT: PASS|FAIL                               (exit status 0 only on PASS)
# Steps are chosen on the kernel command line:
#   vm.nic=1        ARP exchange between the two NICs (TX and RX DMA on both)
#   vm.links=1      bring every NIC up and down again (with IPv6 off, so nothing is sent):
#                   the drivers map and unmap their RX rings (MAP / UNMAP traffic)
#   vm.rebind=BDF   unbind the endpoint's driver, switch its group's default domain to
#                   identity and back to DMA, rebind the driver, then remove the device and
#                   rescan the bus (ATTACH on each switch; DETACH, PROBE, ATTACH on
#                   remove + rescan)
#   vm.reboot=1     on the first boot only: run the checks, then reboot with sysrq; the mark
#                   that tells the boots apart is a CMOS byte, which a reset keeps
#   vm.up=1         at the end, bring every NIC up and leave it up (IPv6 off): live mappings
#   vm.hold=1       after the checks print "VM-HOLD" and wait (up to 5 min) for the host to
#                   inspect the daemon and quit QEMU. If meanwhile the virtio-net (00:04.0)
#                   loses its carrier (the host's `set_link p0 off`), cycle every NIC down
#                   and up again (UNMAP / MAP traffic) and print "VM-HOLD2"
#   vm.holdarp=1    with vm.hold=1 and vm.nic=1: after that cycle, wait for the carrier, run
#                   the ARP exchange again and report it and the iommu errors dmesg gained
#                   since the hold point as "VM-HOLD2: ..." lines
#   vm.blk=1        write 4 MiB of random data to the first virtio disk (/dev/vda), drop the
#                   caches, read it back and compare SHA-256 sums (VM: blk dma: ... sha256 X)
#   vm.traffic=S    (needs vm.nic=1 and /dev/vda) print "VM-TRAFFIC-START", then for S
#                   seconds move disk blocks (1 MiB of random data written, the caches
#                   dropped, read back and compared, round after round) and, at the same time,
#                   ARP between the two NICs (each exchange up to 5 tries); print
#                   "VM-TRAFFIC: disk R rounds, E errors; arp N exchanges, F failed"
#   vm.viot=1       print the ACPI VIOT the firmware gave the guest, in hex (VM-VIOT:)
#   vm.blkread=MIB  (needs /bin/vm-guest-tool) O_DIRECT sequential read of MIB MiB from
#                   /dev/vda into a 2 MiB huge page: "VM-SPEED: blk-read ... MB/s"
#   vm.flood=S      (needs vm-guest-tool and vm.nic=1) raw frames between the two NICs, S
#                   seconds each way: "VM-SPEED: nic N packets/s". Before each speed step the
#                   guest prints "VM-MARK: <step>" and waits 1 s (for the host's counters)
#   vm.edu=1        (needs vm-guest-tool) QEMU's edu bound to vfio-pci: DMA to a mapped IOVA,
#                   to an unmapped one, to a guest-physical address (VM-EDU: lines); the
#                   faults the guest kernel logs are printed as VM-FAULT: and expected
#   vm.fwfault=1    the fault events the guest kernel logs are printed as VM-FAULT: and left
#                   to the host to check (a vhost device the firmware drove faults when QEMU
#                   reads its firmware rings at the reset after Linux moved it into a domain)
#   vm.shell=1      end with an interactive shell
fail=0
arg() { for w in $(cat /proc/cmdline); do case $w in "$1"=*) echo "${w#*=}" ;; esac; done; }
bad() { echo "VM: FAIL: $*"; fail=1; }

# CMOS byte 0x48 (unused by QEMU and SeaBIOS) as a boot counter surviving a reset.
CMOS_MARK=$((0x48))
cmos_read() {
    printf "\\$(printf %o $CMOS_MARK)" | dd of=/dev/port conv=notrunc bs=1 seek=$((0x70)) 2>/dev/null
    dd if=/dev/port bs=1 skip=$((0x71)) count=1 2>/dev/null | od -An -tu1 | tr -d ' '
}
cmos_write() {
    printf "\\$(printf %o $CMOS_MARK)" | dd of=/dev/port conv=notrunc bs=1 seek=$((0x70)) 2>/dev/null
    printf "\\$(printf %o "$1")" | dd of=/dev/port conv=notrunc bs=1 seek=$((0x71)) 2>/dev/null
}

boot=1
if [ "$(arg vm.reboot)" = 1 ]; then
    [ "$(cmos_read)" = 165 ] && boot=2
fi
echo "VM: boot $boot, kernel $(uname -r), cmdline: $(cat /proc/cmdline)"

groups() { # PREFIX
    n=0
    for g in /sys/kernel/iommu_groups/*; do
        [ -d "$g/devices" ] || continue
        n=$((n + 1))
        echo "$1: ${g##*/}: $(ls "$g/devices" | tr '\n' ' ')"
    done
    echo "VM: iommu groups: $n"
}

drv=/sys/bus/virtio/drivers/virtio_iommu
bound=
for v in "$drv"/virtio*; do [ -e "$v" ] && bound="$bound${v##*/} "; done
if [ -n "$bound" ]; then
    echo "VM: virtio_iommu driver bound to: $bound"
else
    bad "virtio_iommu driver not bound"
fi
for d in /sys/bus/pci/devices/*; do
    drvname=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    grp=$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)
    echo "VM-PCI: ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") driver=${drvname:--} group=${grp:--} type=$(cat "$d/iommu_group/type" 2>/dev/null || echo -)"
done
groups VM-GROUP
if [ "$(arg vm.viot)" = 1 ]; then
    echo "VM-VIOT: $(od -An -v -tx1 /sys/firmware/acpi/tables/VIOT 2>/dev/null | tr -d ' \n')"
fi

list_nics() {
    nics=
    for i in /sys/class/net/*; do [ "${i##*/}" = lo ] || nics="$nics${i##*/} "; done
}
list_nics
arp_test() {
    # shellcheck disable=SC2086 # split the list into positional parameters
    set -- $nics
    [ $# -ge 2 ] || { bad "fewer than two NICs: $nics"; return; }
    a=$1 b=$2
    ip link set lo up
    ip addr add 10.99.0.1/24 dev "$a" 2>/dev/null; ip link set "$a" up
    ip addr add 10.99.0.2/24 dev "$b" 2>/dev/null; ip link set "$b" up
    for _ in $(seq 50); do
        [ "$(cat "/sys/class/net/$a/carrier" 2>/dev/null)$(cat "/sys/class/net/$b/carrier" 2>/dev/null)" = 11 ] && break
        sleep 0.2
    done
    # An ARP duplicate-address probe (sender 0.0.0.0) from one NIC is answered by the other
    # even though both addresses are local: TX and RX DMA on both NICs.
    for dir in "$a 10.99.0.2 $b" "$b 10.99.0.1 $a"; do
        # shellcheck disable=SC2086
        set -- $dir
        ok=0
        for _ in 1 2 3 4 5; do
            arping -D -c 1 -w 2 -I "$1" "$2" >/tmp/arping.out 2>&1
            grep -q 'Received 1 response' /tmp/arping.out && { ok=1; break; }
        done
        if [ $ok = 1 ]; then
            echo "VM: nic dma: ARP $1 -> $3 OK"
        else
            bad "nic dma: ARP $1 -> $3"; sed 's/^/VM-ARPING: /' /tmp/arping.out
        fi
    done
}
[ "$(arg vm.nic)" = 1 ] && arp_test

blk_test() {
    [ -b /dev/vda ] || { bad "blk: no /dev/vda"; return; }
    dd if=/dev/urandom of=/tmp/blk.data bs=1M count=4 2>/dev/null
    want=$(sha256sum </tmp/blk.data | cut -d' ' -f1)
    dd if=/tmp/blk.data of=/dev/vda bs=1M conv=fsync 2>/dev/null || bad "blk: write failed"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    got=$(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ "$got" = "$want" ]; then
        echo "VM: blk dma: 4 MiB written, caches dropped, read back: sha256 $got"
    else
        bad "blk dma: read back sha256 $got, wrote $want"
    fi
    rm -f /tmp/blk.data
}
[ "$(arg vm.blk)" = 1 ] && blk_test

# One ARP exchange from $1 to address $2 (up to 5 tries): status 0 if answered.
arp_once() {
    for _ in 1 2 3 4 5; do
        arping -D -c 1 -w 2 -I "$1" "$2" 2>/dev/null | grep -q 'Received 1 response' && return 0
    done
    return 1
}
traffic() {
    secs=$1
    [ -b /dev/vda ] || { bad "traffic: no /dev/vda"; return; }
    # shellcheck disable=SC2086 # split the list into positional parameters
    set -- $nics
    [ $# -ge 2 ] || { bad "traffic: fewer than two NICs: $nics"; return; }
    end=$(($(date +%s) + secs))
    echo "VM-TRAFFIC-START: $secs s"
    (
        r=0 e=0
        while [ "$(date +%s)" -lt "$end" ]; do
            dd if=/dev/urandom of=/tmp/t.in bs=1M count=1 2>/dev/null
            dd if=/tmp/t.in of=/dev/vda bs=1M seek=$((r % 8)) count=1 conv=fsync 2>/dev/null \
                || e=$((e + 1))
            echo 3 >/proc/sys/vm/drop_caches
            dd if=/dev/vda of=/tmp/t.out bs=1M skip=$((r % 8)) count=1 2>/dev/null || e=$((e + 1))
            [ "$(sha256sum </tmp/t.in)" = "$(sha256sum </tmp/t.out)" ] || e=$((e + 1))
            r=$((r + 1))
        done
        echo "$r $e" >/tmp/traffic.disk
    ) &
    n=0 f=0
    while [ "$(date +%s)" -lt "$end" ]; do
        arp_once "$1" 10.99.0.2 && n=$((n + 1)) || f=$((f + 1))
        arp_once "$2" 10.99.0.1 && n=$((n + 1)) || f=$((f + 1))
    done
    wait
    read -r r e </tmp/traffic.disk
    echo "VM-TRAFFIC: disk $r rounds, $e errors; arp $n exchanges, $f failed"
    [ "$e" = 0 ] && [ "$f" = 0 ] || bad "traffic: $e disk errors, $f ARP exchanges failed"
}
[ -n "$(arg vm.traffic)" ] && traffic "$(arg vm.traffic)"

mark() { echo "VM-MARK: $1"; sleep 1; }
tool=/bin/vm-guest-tool
n=$(arg vm.blkread)
if [ -n "$n" ]; then
    mark blk-read
    $tool blk-read /dev/vda "$n" || bad "blk-read"
fi
n=$(arg vm.flood)
if [ -n "$n" ]; then
    mark nic-flood
    # shellcheck disable=SC2086 # the list's first two NICs
    set -- $nics
    $tool nic-flood "$1" "$2" "$n" || bad "nic-flood"
fi
[ -n "$(arg vm.blkread)$(arg vm.flood)" ] && mark done

edu_test() {
    bdf=
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && bdf=${d##*/}
    done
    [ -n "$bdf" ] || { bad "edu: no edu device (1234:11e8)"; return; }
    # x86 has no interrupt remapping behind virtio-iommu; edu's DMA does not need interrupts.
    echo 1 >/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
    echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
    echo "$bdf" >/sys/bus/pci/drivers_probe
    echo "VM: edu $bdf bound to $(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver")")"
    $tool edu "$bdf" >/tmp/edu.out 2>&1 || bad "edu isolation"
    sed 's/^/VM-EDU: /' /tmp/edu.out
    sleep 0.5
    dmesg | grep -E 'fault from EP' | sed 's/^/VM-FAULT: /'
}
[ "$(arg vm.edu)" = 1 ] && edu_test

links() {
    for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 >"$f"; done 2>/dev/null
    for n in $nics; do
        if ip link set "$n" up && sleep 0.5 && ip link set "$n" down; then
            echo "VM: link $n up and down"
        else
            bad "link $n up/down"
        fi
    done
}
[ "$(arg vm.links)" = 1 ] && links

rebind() { # BDF
    d=/sys/bus/pci/devices/$1
    [ -e "$d" ] || { bad "rebind: no device $1"; return; }
    drvname=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    [ -n "$drvname" ] || { bad "rebind: $1 has no driver"; return; }
    g=$(readlink -f "$d/iommu_group")
    echo "VM: rebind $1: driver $drvname, group ${g##*/} type $(cat "$g/type")"
    echo "$1" >"/sys/bus/pci/drivers/$drvname/unbind"
    for t in identity DMA; do
        if echo "$t" >"$g/type"; then
            echo "VM: rebind $1: group type now $(cat "$g/type")"
        else
            bad "rebind: cannot set group type $t"
        fi
    done
    echo "$1" >"/sys/bus/pci/drivers/$drvname/bind" || bad "rebind: bind failed"
    now=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    [ "$now" = "$drvname" ] || bad "rebind: driver after bind is ${now:--}"
    echo "VM: rebind $1: driver ${now:--} again, group type $(cat "$g/type")"
    echo 1 >"$d/remove"
    [ -e "$d" ] && bad "rebind: $1 still present after remove"
    echo 1 >/sys/bus/pci/rescan
    now=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    g=$(readlink -f "$d/iommu_group" 2>/dev/null)
    { [ "$now" = "$drvname" ] && [ -n "$g" ]; } || bad "rebind: after rescan driver=${now:--} group=${g:--}"
    echo "VM: rebind $1: removed and rescanned: driver ${now:--}, group ${g##*/}"
}
rb=$(arg vm.rebind)
if [ -n "$rb" ]; then
    rebind "$rb"
    # The rescanned NIC comes back as a new interface: exercise it again.
    list_nics
    [ "$(arg vm.nic)" = 1 ] && arp_test
    [ "$(arg vm.links)" = 1 ] && links
fi

if [ "$(arg vm.up)" = 1 ]; then
    for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 >"$f"; done 2>/dev/null
    for n in $nics; do ip link set "$n" up || bad "link $n up"; done
    sleep 0.5
    echo "VM: links up: $nics"
fi

dmesg | grep -iE 'iommu|viot|virtio' | sed 's/^/VM-DMESG: /'
# The faults vm.edu provokes are expected, vm.fwfault's are reported (the host checks both).
[ "$(arg vm.fwfault)" = 1 ] && dmesg | grep -E 'fault from EP' | sed 's/^/VM-FAULT: /'
errs=$(dmesg | grep -iE 'iommu' | grep -iE '\b(fault|error|fail|failed|timeout|warn|warning)\b' \
    | { if [ "$(arg vm.edu)" = 1 ] || [ "$(arg vm.fwfault)" = 1 ]; then
            grep -v 'fault from EP'
        else cat; fi; })
if [ -n "$errs" ]; then
    bad "iommu errors in dmesg"; echo "$errs" | sed 's/^/VM-ERR: /'
fi
if dmesg | grep -qE 'WARNING:|BUG:|Call Trace'; then
    bad "kernel warning"; dmesg | grep -A20 -E 'WARNING:|BUG:' | sed 's/^/VM-WARN: /'
fi

[ $fail = 0 ] && echo "VM-RESULT: PASS" || echo "VM-RESULT: FAIL"
if [ "$(arg vm.reboot)" = 1 ] && [ $boot = 1 ]; then
    cmos_write 165
    echo "VM: rebooting (sysrq b)"
    echo 1 >/proc/sys/kernel/sysrq
    echo b >/proc/sysrq-trigger
    sleep 10
fi
[ "$(arg vm.reboot)" = 1 ] && cmos_write 0
if [ "$(arg vm.hold)" = 1 ]; then
    held_at=$(dmesg | wc -l)
    echo "VM-HOLD: waiting for the host"
    vnet=$(ls -d /sys/bus/pci/devices/0000:00:04.0/virtio*/net/* 2>/dev/null | head -n1)
    for _ in $(seq 600); do
        if [ -n "$vnet" ] && [ "$(cat "$vnet/carrier" 2>/dev/null)" = 0 ]; then
            for n in $nics; do ip link set "$n" down; ip link set "$n" up; done
            sleep 0.5
            if [ "$(arg vm.holdarp)" = 1 ] && [ "$(arg vm.nic)" = 1 ]; then
                arp_test 2>&1 | sed 's/^VM: /VM-HOLD2: /'
                n=$(dmesg | tail -n +"$((held_at + 1))" | grep -iE 'iommu' \
                    | grep -ciE '\b(fault|error|fail|failed|timeout|warn|warning)\b')
                echo "VM-HOLD2: iommu errors in dmesg since the hold: $n"
            fi
            echo "VM-HOLD2: links cycled after the carrier loss"
            vnet=
        fi
        sleep 0.5
    done
fi
if [ "$(arg vm.shell)" = 1 ]; then
    echo "VM: interactive shell; exit (or Ctrl-D) powers the guest off"
    setsid cttyhack sh
fi
exit $fail
