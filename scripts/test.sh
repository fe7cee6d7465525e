#!/usr/bin/env bash
# The project's test command (README "test"): installs what the tests need, then runs format
# and lint checks, the Rust test suite (unit, protocol, daemon end-to-end through the mini-VMM)
# and the guest runs under QEMU. Heavy artefacts are cached under ~/.cache/virtio-iommu.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    Rust checks and tests only (no QEMU / kernel builds)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=common.sh
. scripts/common.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1

passed=0
step() {
    [ -n "${current:-}" ] && passed=$((passed + 1))
    current=$*
    printf '\n==> %s\n' "$*" >&2
}
# Every step must succeed (set -e); on the way out, one summary line of the steps run.
summary() {
    local rc=$?
    [ -n "${current:-}" ] && { if [ "$rc" = 0 ]; then passed=$((passed + 1)); fi; }
    printf '\nsteps: %d passed, %d failed\n' "$passed" "$([ "$rc" = 0 ] && echo 0 || echo 1)"
}
trap summary EXIT

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (binaries used by the end-to-end tests)"
cargo build --workspace --locked --bins

step "guest-kernel: cargo fmt --check, clippy -D warnings"
(cd guest-kernel && cargo fmt -- --check \
    && cargo clippy --release --locked --target-dir ../target/guest-kernel -- -D warnings)

# The no_std check: the driver inside a freestanding kernel (core + alloc only), booted
# against QEMU's virtio-iommu-pci and the daemon. --quick boots it only if QEMU is cached.
step "scripts/test-baremetal.sh (the no_std driver in a bare-metal kernel)"
BM_BUILD_QEMU=$((1 - quick)) scripts/test-baremetal.sh

step "cargo test"
cargo test --workspace --locked

if [ "$quick" = 1 ]; then
    exit 0
fi

step "fuzz smoke: every target of fuzz/ for 30 s"
scripts/fuzz.sh 30
for extra in scripts/test-vm.sh scripts/test-qemu-device.sh scripts/test-guest-driver.sh scripts/test-iommufd.sh; do
    if [ -x "$extra" ]; then
        step "$extra"
        "$extra"
    fi
done
