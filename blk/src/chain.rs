//! One descriptor chain, one block request: the chain's buffers are recorded as (address,
//! length) segments and every byte is read or written through the `GuestMemory` the caller
//! passes (guest-physical memory, or an `IommuMemory` translating IOVAs), one access at a time.
//!
//! Nothing holds a slice of guest memory across accesses, so an IOMMU that invalidates a
//! translation knows the access using it is over once its own lock is released (the device
//! side of "finished every access" in TRANSLATION.md §4.3).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::disk::{Disk, SECTOR_SIZE};
use crate::request::{
    status_name, type_name, RequestHeader, DEVICE_ID, HEADER_LEN, S_IOERR, S_OK, S_UNSUPP, T_FLUSH,
    T_GET_ID, T_IN, T_OUT,
};
use virtio_iommu_client::limited;
use zerocopy::IntoBytes;

/// Largest data transfer of one request; a larger one gets `S_IOERR` (no allocation).
pub const MAX_IO_BYTES: usize = 1 << 20;
/// Buffers (non-empty descriptors) of one request; more get `S_IOERR`.
pub const MAX_SEGMENTS: usize = 256;

/// A chain's buffers and the data staging area, reused across requests.
#[derive(Debug, Default)]
pub struct Segments {
    readable: Vec<(GuestAddress, usize)>,
    writable: Vec<(GuestAddress, usize)>,
    readable_len: usize,
    writable_len: usize,
    /// More than [`MAX_SEGMENTS`] buffers, or an overlong part: answered with `S_IOERR`.
    oversized: bool,
    data: Vec<u8>,
}

/// What a chain comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into the chain's device-writable buffers (the used-ring length).
    pub used_len: u32,
    /// The status written, or `None` when the chain had no place for one (or it could not be
    /// written).
    pub status: Option<u8>,
}

/// Why a chain has no usable shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A device-readable buffer after a device-writable one.
    ReadableAfterWritable,
    /// The chain ended on a descriptor that says more follow (a descriptor could not be read,
    /// a loop, or a bad indirect table).
    Truncated,
}

impl Segments {
    /// Records the chain's buffers. A chain whose shape is wrong is `Err`; one that is merely
    /// too large is recorded as oversized (it still gets a status).
    fn record(
        &mut self,
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> Result<(), Shape> {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.oversized = false;
        // The status byte's place: the last byte of the last non-empty writable buffer. Kept
        // apart so it is known even when the segment list is full.
        let mut last_writable = None;
        let mut more = true;
        for desc in chain {
            more = desc.has_next();
            let (addr, len) = (GuestAddress(desc.addr().0), desc.len() as usize);
            let (list, total) = if desc.is_write_only() {
                if len > 0 {
                    last_writable = Some((addr, len));
                }
                (&mut self.writable, &mut self.writable_len)
            } else {
                if !self.writable.is_empty() || last_writable.is_some() {
                    return Err(Shape::ReadableAfterWritable);
                }
                (&mut self.readable, &mut self.readable_len)
            };
            if len == 0 {
                continue;
            }
            // virtio-queue ends a chain past 4 GiB in total, so these sums cannot overflow;
            // checked anyway.
            *total = total.saturating_add(len);
            if list.len() == MAX_SEGMENTS || *total > MAX_IO_BYTES + HEADER_LEN + 1 {
                self.oversized = true;
            } else {
                list.push((addr, len));
            }
        }
        if more {
            return Err(Shape::Truncated);
        }
        if self.oversized {
            // Only the status byte is still needed: make it the one writable segment.
            self.writable.clear();
            if let Some((addr, len)) = last_writable {
                self.writable.push((addr, len));
                self.writable_len = len;
            }
        }
        Ok(())
    }

    /// Copies `out.len()` bytes starting `offset` bytes into the readable part.
    fn read_guest<M: GuestMemory>(&self, mem: &M, offset: usize, out: &mut [u8]) -> bool {
        copy(&self.readable, offset, out.len(), |addr, at, n| {
            mem.read_slice(&mut out[at..at + n], addr).is_ok()
        })
    }

    /// Copies `data` into the writable part starting `offset` bytes in.
    fn write_guest<M: GuestMemory>(&self, mem: &M, offset: usize, data: &[u8]) -> bool {
        copy(&self.writable, offset, data.len(), |addr, at, n| {
            mem.write_slice(&data[at..at + n], addr).is_ok()
        })
    }

    /// Serves one chain against `disk`, through `mem`.
    pub fn serve<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        disk: &mut Disk,
    ) -> Completion {
        if let Err(why) = self.record(chain) {
            limited!(
                Warn,
                "blk: malformed chain ({why:?}): returned without a status"
            );
            return Completion {
                used_len: 0,
                status: None,
            };
        }
        if self.writable_len == 0 {
            limited!(
                Warn,
                "blk: chain without a status byte: returned unanswered"
            );
            return Completion {
                used_len: 0,
                status: None,
            };
        }
        let mut header = RequestHeader::default();
        let readable = !self.oversized
            && self.readable_len >= HEADER_LEN
            && self.read_guest(mem, 0, header.as_mut_bytes());
        let (status, written) = if readable {
            self.execute(mem, &header, disk)
        } else {
            (S_IOERR, 0)
        };
        let status_at = self.writable_len - 1;
        let ok = self.write_guest(mem, status_at, &[status]);
        let t = header.type_.get();
        log::debug!(
            "blk: {} sector {} readable {} writable {} -> {}{}",
            type_name(t),
            header.sector.get(),
            self.readable_len,
            self.writable_len,
            status_name(status),
            if ok { "" } else { " (status not writable)" }
        );
        if !ok {
            return Completion {
                used_len: 0,
                status: None,
            };
        }
        Completion {
            // Bounded by MAX_IO_BYTES + 1.
            used_len: u32::try_from(written + 1).unwrap_or(u32::MAX),
            status: Some(status),
        }
    }

    /// Runs a request with a readable header; returns its status and the data bytes written
    /// to the guest.
    fn execute<M: GuestMemory>(
        &mut self,
        mem: &M,
        header: &RequestHeader,
        disk: &mut Disk,
    ) -> (u8, usize) {
        let sector = header.sector.get();
        // The writable part minus the status byte.
        let room = self.writable_len - 1;
        match header.type_.get() {
            T_IN => {
                if self.readable_len != HEADER_LEN || !whole_sectors(room) {
                    return (S_IOERR, 0);
                }
                let mut data = std::mem::take(&mut self.data);
                data.resize(room, 0);
                let r = if disk.read(sector, &mut data).is_err() {
                    (S_IOERR, 0)
                } else if self.write_guest(mem, 0, &data) {
                    (S_OK, room)
                } else {
                    limited!(
                        Info,
                        "blk: IN at sector {sector}: a data buffer is not writable"
                    );
                    (S_IOERR, 0)
                };
                self.data = data;
                r
            }
            T_OUT => {
                let len = self.readable_len - HEADER_LEN;
                if !whole_sectors(len) {
                    return (S_IOERR, 0);
                }
                let mut data = std::mem::take(&mut self.data);
                data.resize(len, 0);
                // Everything is read before the disk is touched: a buffer that faults halfway
                // leaves the disk unchanged.
                let r = if !self.read_guest(mem, HEADER_LEN, &mut data) {
                    limited!(
                        Info,
                        "blk: OUT at sector {sector}: a data buffer is not readable"
                    );
                    (S_IOERR, 0)
                } else if disk.write(sector, &data).is_err() {
                    (S_IOERR, 0)
                } else {
                    (S_OK, 0)
                };
                self.data = data;
                r
            }
            T_FLUSH => match disk.flush() {
                Ok(()) => (S_OK, 0),
                Err(e) => {
                    log::warn!("blk: flush: {e}");
                    (S_IOERR, 0)
                }
            },
            T_GET_ID => {
                let n = room.min(20).min(DEVICE_ID.len());
                if self.write_guest(mem, 0, &DEVICE_ID[..n]) {
                    (S_OK, n)
                } else {
                    (S_IOERR, 0)
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

/// Whether `len` is a non-zero whole number of sectors no larger than [`MAX_IO_BYTES`].
fn whole_sectors(len: usize) -> bool {
    len > 0 && len <= MAX_IO_BYTES && (len as u64) % SECTOR_SIZE == 0
}

/// Walks `len` bytes of `segments` from byte `offset` on, calling `f(address, position in
/// the caller's buffer, bytes)` per piece; false if `f` failed or the segments are too short.
fn copy(
    segments: &[(GuestAddress, usize)],
    mut offset: usize,
    len: usize,
    mut f: impl FnMut(GuestAddress, usize, usize) -> bool,
) -> bool {
    let mut done = 0;
    for &(addr, seg_len) in segments {
        if done == len {
            break;
        }
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let n = (seg_len - offset).min(len - done);
        let Some(at) = addr.0.checked_add(offset as u64) else {
            return false;
        };
        if !f(GuestAddress(at), done, n) {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == len
}
