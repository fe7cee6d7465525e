//! `mkviot`: writes the ACPI VIOT table that tells a guest which endpoints sit behind the
//! vhost-user virtio-iommu, for QEMU's `-acpitable`.
//!
//! QEMU generates a VIOT only for its built-in `virtio-iommu-pci`; with the generic
//! vhost-user device the table has to come from outside:
//!
//! ```text
//! mkviot --iommu 00:03.0 --pci-range 00:00.0-00:1f.7 --body --out viot.bin
//! qemu-system-x86_64 ... -acpitable sig=VIOT,rev=0,data=viot.bin
//! ```
//!
//! PCI addresses are `[SEGMENT:]BUS:DEV.FN` in hexadecimal, as lspci prints them. A range's
//! endpoint IDs start at its first BDF unless `@ENDPOINT_START` says otherwise, so by default
//! endpoint ID = BDF, as QEMU's own VIOT does.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use virtio_iommu_spec::viot::{bdf, IommuLocation, MmioEndpoint, PciRange, Viot};

/// Generates an ACPI VIOT table (or its body) for a virtio-iommu and its endpoints.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The IOMMU: a virtio-pci function `[SEG:]BUS:DEV.FN`, or `mmio:BASE` for virtio-mmio.
    #[arg(long)]
    iommu: String,

    /// PCI endpoints behind the IOMMU, `[SEG:]BUS:DEV.FN-[SEG:]BUS:DEV.FN[@ENDPOINT_START]`;
    /// repeatable.
    #[arg(long = "pci-range")]
    pci_ranges: Vec<String>,

    /// An MMIO endpoint behind the IOMMU, `ENDPOINT_ID@BASE`; repeatable.
    #[arg(long = "mmio-endpoint")]
    mmio_endpoints: Vec<String>,

    /// Write only the body (the table without its 36-byte ACPI header), as
    /// `-acpitable sig=VIOT,rev=0,data=FILE` wants. Default: the whole table, for `file=FILE`.
    #[arg(long)]
    body: bool,

    /// Output file; `-` for stdout.
    #[arg(long, default_value = "-")]
    out: PathBuf,
}

/// Parses a number in hexadecimal (the lspci convention for PCI addresses), `0x` optional.
fn hex(s: &str, what: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(t, 16).map_err(|_| format!("{what} `{s}` is not a hexadecimal number"))
}

/// Parses a number in decimal or, with `0x`, hexadecimal.
fn number(s: &str, what: &str) -> Result<u64, String> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    }
    .map_err(|_| format!("{what} `{s}` is not a number"))
}

fn bounded<T: TryFrom<u64>>(v: u64, max: u64, what: &str) -> Result<T, String> {
    if v > max {
        return Err(format!("{what} {v:#x} is above {max:#x}"));
    }
    T::try_from(v).map_err(|_| format!("{what} {v:#x} is out of range"))
}

/// Parses `[SEG:]BUS:DEV.FN` into (segment, BDF).
fn parse_pci(s: &str) -> Result<(u16, u16), String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let (seg, bus, devfn) = match parts.as_slice() {
        [bus, devfn] => ("0", *bus, *devfn),
        [seg, bus, devfn] => (*seg, *bus, *devfn),
        _ => return Err(format!("PCI address `{s}`: expected [SEG:]BUS:DEV.FN")),
    };
    let (dev, func) = devfn
        .split_once('.')
        .ok_or_else(|| format!("PCI address `{s}`: expected DEV.FN after the bus"))?;
    let seg: u16 = bounded(hex(seg, "segment")?, 0xffff, "segment")?;
    let bus: u8 = bounded(hex(bus, "bus")?, 0xff, "bus")?;
    let dev: u8 = bounded(hex(dev, "device")?, 0x1f, "device")?;
    let func: u8 = bounded(hex(func, "function")?, 7, "function")?;
    Ok((seg, bdf(bus, dev, func)))
}

/// Parses `--iommu`.
fn parse_iommu(s: &str) -> Result<IommuLocation, String> {
    if let Some(base) = s.trim().strip_prefix("mmio:") {
        return Ok(IommuLocation::Mmio {
            base: number(base, "MMIO base")?,
        });
    }
    let (segment, bdf) = parse_pci(s)?;
    Ok(IommuLocation::Pci { segment, bdf })
}

/// Parses `--pci-range`.
fn parse_pci_range(s: &str) -> Result<PciRange, String> {
    let (range, start_id) = match s.split_once('@') {
        Some((r, id)) => (r, Some(id)),
        None => (s, None),
    };
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| format!("PCI range `{s}`: expected FIRST-LAST"))?;
    let (segment_start, bdf_start) = parse_pci(a)?;
    let (segment_end, bdf_end) = parse_pci(b)?;
    if segment_start > segment_end || bdf_start > bdf_end {
        return Err(format!("PCI range `{s}`: first is above last"));
    }
    let endpoint_start = match start_id {
        Some(id) => bounded(
            number(id, "endpoint start")?,
            u64::from(u32::MAX),
            "endpoint start",
        )?,
        None => u32::from(bdf_start),
    };
    // Linux computes endpoint_start + (BDF - bdf_start) + (segment offset << 16) in 32 bits;
    // refuse a range whose last ID would not fit.
    let span = (u64::from(segment_end - segment_start) << 16) + u64::from(bdf_end - bdf_start);
    if u64::from(endpoint_start) + span > u64::from(u32::MAX) {
        return Err(format!("PCI range `{s}`: endpoint IDs exceed 32 bits"));
    }
    Ok(PciRange {
        endpoint_start,
        segment_start,
        segment_end,
        bdf_start,
        bdf_end,
    })
}

/// Parses `--mmio-endpoint`.
fn parse_mmio_endpoint(s: &str) -> Result<MmioEndpoint, String> {
    let (id, base) = s
        .split_once('@')
        .ok_or_else(|| format!("MMIO endpoint `{s}`: expected ENDPOINT_ID@BASE"))?;
    Ok(MmioEndpoint {
        endpoint: bounded(
            number(id, "endpoint ID")?,
            u64::from(u32::MAX),
            "endpoint ID",
        )?,
        base: number(base, "MMIO base")?,
    })
}

/// Builds the requested bytes from the arguments.
fn generate(args: &Args) -> Result<Vec<u8>, String> {
    let iommu = parse_iommu(&args.iommu)?;
    let pci_ranges = args
        .pci_ranges
        .iter()
        .map(|r| parse_pci_range(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mmio_endpoints = args
        .mmio_endpoints
        .iter()
        .map(|m| parse_mmio_endpoint(m))
        .collect::<Result<Vec<_>, _>>()?;
    if pci_ranges.is_empty() && mmio_endpoints.is_empty() {
        return Err("no endpoints: give --pci-range or --mmio-endpoint".into());
    }
    // The node count is bounded by the command line; the 16-bit table offsets are checked by
    // the writer, which refuses tables over 64 KiB.
    let viot = Viot {
        iommu,
        pci_ranges: &pci_ranges,
        mmio_endpoints: &mmio_endpoints,
    };
    let too_large = |_| "the table exceeds the 64 KiB VIOT offsets allow".to_string();
    let mut out = vec![0u8; viot.table_len()];
    let len = if args.body {
        viot.write_body(&mut out).map_err(too_large)?
    } else {
        viot.write_table(&mut out, *b"VIOMMU", *b"VIOMMUTB")
            .map_err(too_large)?
    };
    out.truncate(len);
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bytes = match generate(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mkviot: {e}");
            return ExitCode::from(2);
        }
    };
    let written = if args.out.as_os_str() == "-" {
        std::io::stdout().lock().write_all(&bytes)
    } else {
        std::fs::write(&args.out, &bytes)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkviot: cannot write {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> Result<Vec<u8>, String> {
        let mut v = vec!["mkviot"];
        v.extend_from_slice(argv);
        generate(&Args::try_parse_from(v).map_err(|e| e.to_string())?)
    }

    /// The worked example of `spec/PROTOCOL.md` §10.5, byte for byte: IOMMU at 00:03.0, bus 0
    /// translated, endpoint ID = BDF.
    const WORKED_EXAMPLE_BODY: [u8; 52] = [
        0x02, 0x00, 0x30, 0x00, // node count 2, node offset 48
        0, 0, 0, 0, 0, 0, 0, 0, // reserved
        0x03, 0x00, 0x10, 0x00, // type 3 (virtio-pci IOMMU), length 16
        0x00, 0x00, 0x18, 0x00, // segment 0, BDF 00:03.0
        0, 0, 0, 0, 0, 0, 0, 0, // reserved
        0x01, 0x00, 0x18, 0x00, // type 1 (PCI range), length 24
        0x00, 0x00, 0x00, 0x00, // endpoint start 0
        0x00, 0x00, 0x00, 0x00, // segments 0..0
        0x00, 0x00, 0xff, 0x00, // BDF 0x0000..0x00ff
        0x30, 0x00, // output node 48
        0, 0, 0, 0, 0, 0, // reserved
    ];

    #[test]
    fn worked_example_body() {
        let body = run(&[
            "--iommu",
            "00:03.0",
            "--pci-range",
            "00:00.0-00:1f.7",
            "--body",
        ]);
        assert_eq!(body, Ok(WORKED_EXAMPLE_BODY.to_vec()));
        // Same with explicit segments and endpoint start.
        let body = run(&[
            "--iommu",
            "0000:00:03.0",
            "--pci-range",
            "0000:00:00.0-0000:00:1f.7@0",
            "--body",
        ]);
        assert_eq!(body, Ok(WORKED_EXAMPLE_BODY.to_vec()));
    }

    #[test]
    fn whole_table_has_header_and_checksum() {
        let t = run(&["--iommu", "00:03.0", "--pci-range", "0:00.0-0:1f.7"]).unwrap();
        assert_eq!(t.len(), 88);
        assert_eq!(&t[0..4], b"VIOT");
        assert_eq!(&t[4..8], &[88, 0, 0, 0]);
        assert_eq!(t[8], 0, "revision 0");
        assert_eq!(&t[10..16], b"VIOMMU");
        assert_eq!(&t[16..24], b"VIOMMUTB");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&t[36..], &WORKED_EXAMPLE_BODY);
    }

    #[test]
    fn endpoint_start_defaults_to_first_bdf() {
        // Range 01:00.0-01:1f.7 on segment 1, IDs from BDF 0x100 unless overridden.
        let b = run(&[
            "--iommu",
            "00:02.0",
            "--pci-range",
            "1:01:00.0-1:01:1f.7",
            "--body",
        ])
        .unwrap();
        assert_eq!(b.len(), 52);
        assert_eq!(
            &b[16..20],
            &[0x00, 0x00, 0x10, 0x00],
            "IOMMU segment 0, BDF 00:02.0"
        );
        assert_eq!(
            &b[32..36],
            &[0x00, 0x01, 0x00, 0x00],
            "endpoint start 0x100"
        );
        assert_eq!(&b[36..40], &[0x01, 0x00, 0x01, 0x00], "segments 1..1");
        assert_eq!(&b[40..46], &[0x00, 0x01, 0xff, 0x01, 0x30, 0x00]);
        let b = run(&[
            "--iommu",
            "00:02.0",
            "--pci-range",
            "01:00.0-01:00.7@0x20",
            "--body",
        ])
        .unwrap();
        assert_eq!(&b[32..36], &[0x20, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x00, 0x01, 0x07, 0x01]);
    }

    #[test]
    fn several_nodes_and_mmio() {
        let b = run(&[
            "--iommu",
            "mmio:0xfeb00000",
            "--pci-range",
            "00:04.0-00:04.0",
            "--pci-range",
            "00:05.0-00:05.0",
            "--mmio-endpoint",
            "7@0x10000000",
            "--body",
        ])
        .unwrap();
        assert_eq!(b.len(), 12 + 16 + 3 * 24);
        assert_eq!(&b[0..4], &[4, 0, 0x30, 0], "4 nodes, first at 48");
        assert_eq!(&b[12..16], &[4, 0, 16, 0], "virtio-mmio IOMMU node");
        assert_eq!(&b[20..28], &0xfeb0_0000u64.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 24, 0]);
        assert_eq!(&b[32..36], &[0x20, 0, 0, 0], "00:04.0 has ID 0x20");
        assert_eq!(&b[40..44], &[0x20, 0, 0x20, 0]);
        assert_eq!(&b[56..60], &[0x28, 0, 0, 0], "00:05.0 has ID 0x28");
        assert_eq!(&b[76..84], &[2, 0, 24, 0, 7, 0, 0, 0], "MMIO endpoint 7");
        assert_eq!(&b[84..92], &0x1000_0000u64.to_le_bytes());
        assert_eq!(&b[92..94], &[0x30, 0], "output node 48");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["--iommu", "00:03.0"][..],
            &["--iommu", "00:20.0", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "00:03.8", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "100:03.0", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "03.0", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "1:2:00:03.0", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "00:03", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "mmio:zz", "--pci-range", "00:00.0-00:01.0"],
            &["--iommu", "00:03.0", "--pci-range", "00:01.0-00:00.0"],
            &["--iommu", "00:03.0", "--pci-range", "1:00:00.0-0:00:01.0"],
            &["--iommu", "00:03.0", "--pci-range", "00:00.0"],
            &[
                "--iommu",
                "00:03.0",
                "--pci-range",
                "00:00.0-00:01.0@0x100000000",
            ],
            &[
                "--iommu",
                "00:03.0",
                "--pci-range",
                "00:00.0-00:01.0@0xffffffff",
            ],
            &["--iommu", "00:03.0", "--mmio-endpoint", "7"],
            &["--iommu", "00:03.0", "--mmio-endpoint", "0x100000000@0"],
        ] {
            assert!(run(bad).is_err(), "{bad:?} accepted");
        }
        // The last ID may be exactly u32::MAX.
        assert!(run(&["--iommu", "0:3.0", "--pci-range", "0:0.0-0:0.1@0xfffffffe"]).is_ok());
    }
}
