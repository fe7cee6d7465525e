#!/usr/bin/env bash
# The fuzz targets in fuzz/ (cargo-fuzz on the nightly toolchain): every target for a while,
# from its committed corpus (fuzz/corpus/TARGET, read-only here) plus a scratch corpus.
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]   (default: 30 s, every target)
# A crash or a broken invariant fails the script; libFuzzer leaves the input in
# fuzz/artifacts/TARGET/ (replay: cargo +nightly fuzz run TARGET FILE). Logs: $VIRTIO_IOMMU_CACHE/fuzz/.
# Installs cargo-fuzz when missing (cargo install cargo-fuzz --locked).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

secs=${1:-30}
[ $# -gt 0 ] && shift
cargo +nightly --version >/dev/null 2>&1 || die "cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked >&2
fi
cd "$HERE/../fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
L=$VIRTIO_IOMMU_CACHE/fuzz
mkdir -p "$L"
log "building ${targets[*]}"
cargo +nightly fuzz build -O >&2
for t in "${targets[@]}"; do
    scratch=$(mktemp -d "$L/corpus-$t.XXXXXX")
    log "$t: ${secs} s (log $L/$t.log)"
    rc=0
    cargo +nightly fuzz run -O "$t" "$scratch" "corpus/$t" -- -max_total_time="$secs" \
        >"$L/$t.log" 2>&1 || rc=$?
    rm -rf "$scratch"
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$L/$t.log" | tail -n1 || true)
    if [ "$rc" != 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$L/$t.log" >&2 || tail -n 30 "$L/$t.log" >&2
        die "$t failed (status $rc)"
    fi
    log "$t: ${done_line:-no DONE line}"
done
