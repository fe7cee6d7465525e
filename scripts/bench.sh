#!/usr/bin/env bash
# Runs the benchmarks (device/benches: queue, mappings, sva, translation; client/benches:
# iotlb_hit; blk/benches: read_4k; tests/benches: socket) and writes ONE markdown table: per
# case its criterion median (ns per unit) and its instructions per unit counted by
# `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike time), plus the resident
# bytes per mapping at 1M, with the machine and the commit.
#
# usage: scripts/bench.sh [--quick] [--no-time] [--out FILE]
#   --quick    skip the 1M-mapping cases (minutes instead of tens of minutes)
#   --no-time  instruction counts and memory only (no criterion run)
#   --out      where the table goes (default target/bench/bench-COMMIT.md); also printed
#
# A unit is one request, or one pair for the *_pair cases (and unmap_remap); one access for
# client/*; one translation for sva/nested_*, one fault → page request → PAGE_RESP → retried
# translation for sva/page_request_round_trip; one 4 KiB read request for blk/* (the
# confined/unconfined ratio follows the table); one round trip for translation/* (instructions
# of every thread: a run of N minus a run of 0, divided by N, since the daemon's service thread
# does half the work; *_poll_off with busy-polling off at both ends). Criterion writes its estimates under target/criterion/; callgrind's
# parts go to target/bench/callgrind/.
#
# socket/* are requests through the real vhost-user socket to the release daemon binary (a
# child process): their instructions are the daemon's alone (callgrind of the daemon process,
# a run of N minus a run of 0, per request), and `socket --figures` prints rows of its own
# (median and p99 ns per request, wall requests/s, requests per daemon CPU-second, the
# daemon's context switches, kicks and syscalls per request; the syscalls counted by
# `perf stat` if it can count tracepoints here, else by strace, which slows the daemon and so
# changes its batching).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

quick=0 time=1 out=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --no-time) time=0 ;;
        --out) out=$2; shift ;;
        *) die "unknown argument $1 (usage: scripts/bench.sh [--quick] [--no-time] [--out FILE])" ;;
    esac
    shift
done

command -v valgrind >/dev/null || apt_ensure valgrind
command -v jq >/dev/null || apt_ensure jq

commit=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- . 2>/dev/null || commit="$commit+dirty"
work=target/bench
mkdir -p "$work"
out=${out:-$work/bench-$commit.md}

if [ "$quick" = 1 ]; then
    export BENCH_QUICK=1
    unset QUEUE_BENCH_1M
else
    export QUEUE_BENCH_1M=1
fi

log "building the bench binaries"
cargo build -p vhost-device-iommu --release --bin vhost-device-iommu 2>/dev/null ||
    die "cargo build -p vhost-device-iommu --release failed"
export VHOST_DEVICE_IOMMU_BIN=$PWD/target/release/vhost-device-iommu
mapfile -t bins < <(cargo bench -p vhost-device-iommu -p virtio-iommu-client \
    -p vhost-user-blk-confined -p virtio-iommu-e2e --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.kind == ["bench"]) | "\(.target.name)=\(.executable)"')
declare -A bin
for b in "${bins[@]}"; do bin[${b%%=*}]=${b#*=}; done
parted=(queue mappings sva iotlb_hit read_4k)
for b in "${parted[@]}" translation socket; do
    [ -n "${bin[$b]:-}" ] || die "bench binary $b not found (${bins[*]})"
done

# The binaries run directly (as `cargo bench` would, with `--bench`), so that nothing is
# rebuilt between the runs of one table.
export CRITERION_HOME=$PWD/target/criterion
if [ "$time" = 1 ]; then
    for b in "${parted[@]}" translation socket; do
        log "criterion: $b"
        "${bin[$b]}" --bench >"$work/criterion-$b.log" 2>&1 ||
            die "criterion run of $b failed (see $work/criterion-$b.log)"
    done
fi

# Instruction counts: collection only inside `measured`, a dump after every `part_end`; the
# binary names the parts in dump order.
cg=$work/callgrind
rm -rf "$cg"
mkdir -p "$cg"
for b in "${parted[@]}"; do
    log "callgrind: $b"
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
        --dump-after='*part_end*' --callgrind-out-file="$cg/$b.out" \
        "${bin[$b]}" --instructions >"$cg/$b.parts" 2>"$cg/$b.log" ||
        die "callgrind run of $b failed (see $cg/$b.log)"
done

# `instr NAME PER_UNIT` lines from the parts (part i is dump file NAME.out.i).
instr_lines() {
    local b=$1 i=0 name units file total
    while read -r _ name units; do
        i=$((i + 1))
        [ "$name" = - ] && continue
        file=$cg/$b.out.$i
        [ -f "$file" ] || die "missing callgrind dump $file"
        total=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
        awk -v n="$name" -v t="$total" -v u="$units" 'BEGIN { printf "instr %s %.0f\n", n, t / u }'
    done <"$cg/$b.parts"
}
# The translation bench's round trips run on two threads: whole-program totals of N and of 0,
# with both ends busy-polling for POLL µs (0: off; the spinning's instructions count too).
translation_instr() {
    local only=$1 name=$2 poll=$3 n=2000 t0 tn run
    for iters in 0 $n; do
        run=$cg/translation-$only-$poll-$iters
        TRANSLATION_BENCH_ITERS=$iters TRANSLATION_BENCH_ONLY=$only \
            TRANSLATION_BENCH_POLL_US=$poll valgrind --tool=callgrind \
            --callgrind-out-file="$run.out" "${bin[translation]}" >/dev/null 2>"$run.log" ||
            die "callgrind run of translation ($only, poll $poll, $iters) failed"
    done
    t0=$(awk '/^(summary|totals):/ { print $2; exit }' "$cg/translation-$only-$poll-0.out")
    tn=$(awk '/^(summary|totals):/ { print $2; exit }' "$cg/translation-$only-$poll-$n.out")
    awk -v n="$name" -v a="$t0" -v b="$tn" -v u="$n" 'BEGIN { printf "instr %s %.0f\n", n, (b - a) / u }'
}
# The socket bench's daemon is a child process: the daemon alone under callgrind (through a
# wrapper as VHOST_DEVICE_IOMMU_BIN), N round trips (or kicks of 64) minus 0, per request.
socket_instr() {
    local case=$1 name=$2 n=$3 per=$4 t0 tn wrap=$cg/daemon-callgrind.sh
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file="$SOCKET_CALLGRIND_OUT" %q "$@"\n' \
        "$VHOST_DEVICE_IOMMU_BIN" >"$wrap"
    chmod +x "$wrap"
    for iters in 0 "$n"; do
        VHOST_DEVICE_IOMMU_BIN=$wrap SOCKET_CALLGRIND_OUT=$cg/socket-$case-$iters.out \
            "${bin[socket]}" --daemon-run "$case" "$iters" >/dev/null \
            2>"$cg/socket-$case-$iters.log" ||
            die "callgrind run of the socket daemon ($case, $iters) failed"
    done
    t0=$(awk '/^(summary|totals):/ { print $2; exit }' "$cg/socket-$case-0.out")
    tn=$(awk '/^(summary|totals):/ { print $2; exit }' "$cg/socket-$case-$n.out")
    awk -v n="$name" -v a="$t0" -v b="$tn" -v u="$((n * per))" \
        'BEGIN { printf "instr %s %.0f\n", n, (b - a) / u }'
}
log "callgrind: translation, socket"
instr=$( {
    for b in "${parted[@]}"; do instr_lines "$b"; done
    translation_instr translate translation/translate_round_trip 50
    translation_instr translate translation/translate_round_trip_poll_off 0
    translation_instr invalidate translation/invalidate_push_ack 50
    translation_instr invalidate translation/invalidate_push_ack_poll_off 0
    socket_instr sync socket/sync_round_trip 2000 1
    socket_instr batch64 socket/batch64 100 64
    socket_instr sync-journal socket/sync_round_trip_journal 2000 1
    socket_instr batch64-journal socket/batch64_journal 100 64
} )

log "socket: figures"
if perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    counter=perf
else
    command -v strace >/dev/null || apt_ensure strace
    counter=strace
fi
fig=$(SOCKET_BENCH_SYSCALLS=$counter "${bin[socket]}" --figures 2>"$work/socket-figures.log") ||
    die "socket --figures failed (see $work/socket-figures.log)"

log "memory per mapping"
mem=""
if [ "$quick" = 0 ]; then
    for kind in seq rand; do
        mem+="$("${bin[mappings]}" --memory "$kind")"$'\n'
    done
fi

# The criterion median of a case, ns per unit ("-" without a run).
median() {
    local f=$CRITERION_HOME/$1/new/estimates.json
    if [ "$time" = 1 ] && [ -f "$f" ]; then
        jq -r '.median.point_estimate | . * 10 | round / 10' "$f"
    else
        echo -
    fi
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "Commit \`$commit\`, $(date -u +%Y-%m-%d), $(rustc --version | cut -d' ' -f1-2)," \
        "$cpu, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end" \
        "($([ "$quick" = 1 ] && echo "quick: no 1M cases" || echo "full"))."
    echo
    echo "| case | ns median | instructions |"
    echo "|---|---:|---:|"
    while read -r _ name per; do
        echo "| $name | $(median "$name") | $per |"
    done <<<"$instr"
    while read -r _ name bytes; do
        [ -n "$name" ] && echo "| $name (bytes, ΔRSS / N) | — | $bytes |"
    done <<<"$mem"
    # Through the socket (criterion's medians and the daemon's instructions are rows above):
    # the figures, ns in the time column, the other units in the last one.
    while read -r _ name value unit; do
        case $unit in
            ns/*) echo "| $name ($unit) | $value | — |" ;;
            syscalls/*) echo "| $name ($unit, $counter) | — | $value |" ;;
            *) echo "| $name ($unit) | — | $value |" ;;
        esac
    done <<<"$fig"
    # Confined over unconfined 4 KiB read throughput (time, and instructions, per request).
    plain=$(median blk/read_4k_unconfined) confined=$(median blk/read_4k_confined)
    iplain=$(awk '$2 == "blk/read_4k_unconfined" { print $3 }' <<<"$instr")
    iconfined=$(awk '$2 == "blk/read_4k_confined" { print $3 }' <<<"$instr")
    echo
    awk -v p="$plain" -v c="$confined" -v ip="$iplain" -v ic="$iconfined" 'BEGIN {
        printf "blk 4 KiB reads, confined / unconfined throughput: %s (time), %.2f (instructions)\n",
            (p == "-" || c == "-") ? "-" : sprintf("%.2f", p / c), ip / ic }'
} >"$out"
cat "$out"
log "table written to $out"
