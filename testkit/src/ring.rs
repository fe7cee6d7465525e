//! The split virtqueue (virtio 1.x "Split Virtqueues"): descriptor table, available ring and
//! used ring at guest-physical addresses, and the accesses the driver side and the device side
//! make to them. Ring indices are read with acquire and written with release ordering, so
//! everything written before an index is published is seen by whoever reads that index.

use std::sync::atomic::Ordering;

use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;

/// Memory a ring lives in: byte copies plus atomic 16-bit ring indices.
pub trait RingMemory {
    /// Copies guest memory at `gpa` into `buf`.
    ///
    /// # Errors
    /// The range is not in guest memory.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()>;
    /// Copies `data` into guest memory at `gpa`.
    ///
    /// # Errors
    /// The range is not in guest memory.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<()>;
    /// Loads the little-endian `u16` at the 2-aligned `gpa` with acquire ordering.
    ///
    /// # Errors
    /// Not in guest memory, or not aligned.
    fn load_u16(&self, gpa: u64) -> Result<u16>;
    /// Stores a little-endian `u16` at the 2-aligned `gpa` with release ordering.
    ///
    /// # Errors
    /// Not in guest memory, or not aligned.
    fn store_u16(&self, gpa: u64, v: u16) -> Result<()>;
}

/// Any dirty bitmap: the tests play the guest on the device's own memory type too.
impl<B: Bitmap + 'static> RingMemory for GuestMemoryMmap<B> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| out_of_bounds(gpa, buf.len()))
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.write_slice(data, GuestAddress(gpa))
            .map_err(|_| out_of_bounds(gpa, data.len()))
    }

    fn load_u16(&self, gpa: u64) -> Result<u16> {
        self.load::<u16>(GuestAddress(gpa), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| out_of_bounds(gpa, 2))
    }

    fn store_u16(&self, gpa: u64, v: u16) -> Result<()> {
        self.store(v.to_le(), GuestAddress(gpa), Ordering::Release)
            .map_err(|_| out_of_bounds(gpa, 2))
    }
}

fn out_of_bounds(gpa: u64, len: usize) -> Error {
    Error::OutOfBounds {
        gpa,
        len: len as u64,
    }
}

/// One descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor of the chain (with [`DESC_F_NEXT`]).
    pub next: u16,
}

impl Desc {
    /// The 16 bytes of the descriptor.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&self.addr.to_le_bytes());
        d[8..12].copy_from_slice(&self.len.to_le_bytes());
        d[12..14].copy_from_slice(&self.flags.to_le_bytes());
        d[14..16].copy_from_slice(&self.next.to_le_bytes());
        d
    }

    /// The descriptor in 16 bytes.
    #[must_use]
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    /// Whether the device may write the buffer.
    #[must_use]
    pub fn is_write(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }

    /// Writes the descriptor at `gpa` (a ring slot or an indirect table entry).
    ///
    /// # Errors
    /// [`RingMemory::write`]'s.
    pub fn write_at(&self, mem: &(impl RingMemory + ?Sized), gpa: u64) -> Result<()> {
        mem.write(gpa, &self.to_bytes())
    }

    /// Reads the descriptor at `gpa`.
    ///
    /// # Errors
    /// [`RingMemory::read`]'s.
    pub fn read_at(mem: &(impl RingMemory + ?Sized), gpa: u64) -> Result<Self> {
        let mut b = [0u8; 16];
        mem.read(gpa, &mut b)?;
        Ok(Self::from_bytes(b))
    }
}

/// Guest-physical addresses of one split virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of entries (the driver's choice, at most the device maximum).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

impl RingConfig {
    /// Bytes of the descriptor table, available ring and used ring of a `size`-entry queue
    /// (the rings with their event-index word).
    #[must_use]
    pub fn area_sizes(size: u16) -> [u64; 3] {
        let n = u64::from(size);
        [DESC_SIZE * n, 6 + 2 * n, 6 + 8 * n]
    }

    fn slot(&self, idx: u16) -> u64 {
        u64::from(idx % self.size)
    }

    /// Writes descriptor `i` of the table.
    ///
    /// # Errors
    /// [`RingMemory::write`]'s.
    pub fn write_desc(&self, mem: &(impl RingMemory + ?Sized), i: u16, d: Desc) -> Result<()> {
        d.write_at(mem, self.desc + DESC_SIZE * u64::from(i))
    }

    /// Reads descriptor `i` of the table.
    ///
    /// # Errors
    /// `Protocol` for an index outside the table, or [`RingMemory::read`]'s.
    pub fn read_desc(&self, mem: &(impl RingMemory + ?Sized), i: u16) -> Result<Desc> {
        if i >= self.size {
            return Err(Error::Protocol(format!(
                "descriptor {i} outside a table of {}",
                self.size
            )));
        }
        Desc::read_at(mem, self.desc + DESC_SIZE * u64::from(i))
    }

    /// The descriptors of the chain at `head`, following `next` for at most `size`
    /// descriptors (a looping chain ends there).
    ///
    /// # Errors
    /// As [`Self::read_desc`].
    pub fn read_chain(&self, mem: &(impl RingMemory + ?Sized), head: u16) -> Result<Vec<Desc>> {
        let mut out = Vec::new();
        let mut i = head;
        for _ in 0..self.size {
            let d = self.read_desc(mem, i)?;
            out.push(d);
            if d.flags & DESC_F_NEXT == 0 {
                break;
            }
            i = d.next;
        }
        Ok(out)
    }

    // ---- driver side -------------------------------------------------------------------

    /// Driver: writes `head` into the available-ring slot of index `idx` (not yet published).
    ///
    /// # Errors
    /// [`RingMemory::store_u16`]'s.
    pub fn put_avail(&self, mem: &(impl RingMemory + ?Sized), idx: u16, head: u16) -> Result<()> {
        mem.store_u16(self.avail + 4 + 2 * self.slot(idx), head)
    }

    /// Driver: publishes `idx` as the available index.
    ///
    /// # Errors
    /// [`RingMemory::store_u16`]'s.
    pub fn set_avail_idx(&self, mem: &(impl RingMemory + ?Sized), idx: u16) -> Result<()> {
        mem.store_u16(self.avail + 2, idx)
    }

    /// Driver: writes the avail ring's flags (bit 0: no used-buffer notifications, please).
    ///
    /// # Errors
    /// [`RingMemory::store_u16`]'s.
    pub fn set_avail_flags(&self, mem: &(impl RingMemory + ?Sized), flags: u16) -> Result<()> {
        mem.store_u16(self.avail, flags)
    }

    /// Driver: the used index the device last published.
    ///
    /// # Errors
    /// [`RingMemory::load_u16`]'s.
    pub fn used_idx(&self, mem: &(impl RingMemory + ?Sized)) -> Result<u16> {
        mem.load_u16(self.used + 2)
    }

    /// Device: publishes `idx` as the used index verbatim (a test rewinding what a device
    /// published, as if it had died before publishing).
    ///
    /// # Errors
    /// [`RingMemory::store_u16`]'s.
    pub fn set_used_idx(&self, mem: &(impl RingMemory + ?Sized), idx: u16) -> Result<()> {
        mem.store_u16(self.used + 2, idx)
    }

    /// Driver: the used element `(id, len)` of index `idx`.
    ///
    /// # Errors
    /// [`RingMemory::read`]'s.
    pub fn used_elem(&self, mem: &(impl RingMemory + ?Sized), idx: u16) -> Result<(u32, u32)> {
        let mut raw = [0u8; 8];
        mem.read(self.used + 4 + 8 * self.slot(idx), &mut raw)?;
        let [a, b, c, d, e, f, g, h] = raw;
        Ok((
            u32::from_le_bytes([a, b, c, d]),
            u32::from_le_bytes([e, f, g, h]),
        ))
    }

    // ---- device side -------------------------------------------------------------------

    /// Device: the available index the driver last published.
    ///
    /// # Errors
    /// [`RingMemory::load_u16`]'s.
    pub fn avail_idx(&self, mem: &(impl RingMemory + ?Sized)) -> Result<u16> {
        mem.load_u16(self.avail + 2)
    }

    /// Device: the head in the available-ring slot of index `idx`.
    ///
    /// # Errors
    /// [`RingMemory::load_u16`]'s.
    pub fn avail_head(&self, mem: &(impl RingMemory + ?Sized), idx: u16) -> Result<u16> {
        mem.load_u16(self.avail + 4 + 2 * self.slot(idx))
    }

    /// Device: appends the used element `(id, len)` and publishes the new used index.
    ///
    /// # Errors
    /// [`RingMemory`]'s.
    pub fn push_used(&self, mem: &(impl RingMemory + ?Sized), id: u32, len: u32) -> Result<()> {
        let idx = self.used_idx(mem)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&id.to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(self.used + 4 + 8 * self.slot(idx), &elem)?;
        mem.store_u16(self.used + 2, idx.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_of_one_ring() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let q = RingConfig {
            size: 4,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        };
        assert_eq!(RingConfig::area_sizes(4), [64, 14, 38]);
        let d0 = Desc {
            addr: 0x10,
            len: 4,
            flags: DESC_F_NEXT,
            next: 3,
        };
        let d3 = Desc {
            addr: 0x20,
            len: 8,
            flags: DESC_F_WRITE,
            next: 0,
        };
        q.write_desc(&mem, 0, d0).unwrap();
        q.write_desc(&mem, 3, d3).unwrap();
        assert_eq!(Desc::from_bytes(d0.to_bytes()), d0);
        assert!(d3.is_write() && !d0.is_write());
        // Wrapping slots: index 5 is slot 1.
        q.put_avail(&mem, 5, 0).unwrap();
        q.set_avail_idx(&mem, 6).unwrap();
        assert_eq!(q.avail_idx(&mem).unwrap(), 6);
        assert_eq!(q.avail_head(&mem, 5).unwrap(), 0);
        assert_eq!(q.read_chain(&mem, 0).unwrap(), vec![d0, d3]);
        assert!(q.read_desc(&mem, 4).is_err());
        q.push_used(&mem, 0, 8).unwrap();
        assert_eq!(q.used_idx(&mem).unwrap(), 1);
        assert_eq!(q.used_elem(&mem, 0).unwrap(), (0, 8));
        // A looping chain stops after `size` descriptors.
        q.write_desc(
            &mem,
            1,
            Desc {
                next: 1,
                flags: DESC_F_NEXT,
                ..d0
            },
        )
        .unwrap();
        assert_eq!(q.read_chain(&mem, 1).unwrap().len(), 4);
        let mut raw = [0u8; 2];
        mem.read_slice(&mut raw, GuestAddress(0x2000 + 4 + 2))
            .unwrap();
        assert_eq!(raw, [0, 0]);
    }
}
