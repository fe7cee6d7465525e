//! Which device the kernel runs against: where QEMU's reference device legitimately differs,
//! a check expects each its own answer.

/// The device under test, from the `device=` command-line word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// QEMU's own `virtio-iommu-pci`, the reference.
    Qemu,
    /// vhost-device-iommu behind `vhost-user-test-device-pci`.
    Daemon,
}

impl DeviceKind {
    /// `want_qemu` for QEMU, `want_daemon` for the daemon.
    pub fn pick<T>(self, want_qemu: T, want_daemon: T) -> T {
        match self {
            DeviceKind::Qemu => want_qemu,
            DeviceKind::Daemon => want_daemon,
        }
    }

    /// The name used on the command line and in the log.
    pub fn name(self) -> &'static str {
        self.pick("qemu", "daemon")
    }
}

/// What the command line asks for: `device=qemu|daemon`, `sva=1` for the vSVA checks (the
/// daemon must run with `--pasid-bits`) and `blk=1` for the confined virtio-blk checks only.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    /// The device under test.
    pub kind: DeviceKind,
    /// Run the vSVA checks.
    pub sva: bool,
    /// Run only the confined virtio-blk checks (a blk backend behind the daemon).
    pub blk: bool,
}

impl Args {
    /// Parses the command line.
    ///
    /// # Errors
    /// An unknown word, or no `device=`.
    pub fn parse(cmdline: &str) -> Result<Args, &str> {
        let mut kind = None;
        let mut sva = false;
        let mut blk = false;
        for word in cmdline.split_ascii_whitespace() {
            match word {
                "device=qemu" => kind = Some(DeviceKind::Qemu),
                "device=daemon" => kind = Some(DeviceKind::Daemon),
                "sva=1" => sva = true,
                "blk=1" => blk = true,
                other => return Err(other),
            }
        }
        Ok(Args {
            kind: kind.ok_or("device=qemu|daemon missing")?,
            sva,
            blk,
        })
    }
}
