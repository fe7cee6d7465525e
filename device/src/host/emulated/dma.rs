//! DMA on behalf of a simulated device: copies between its buffer and guest memory, split at
//! every translation boundary.

use log::debug;
use virtio_iommu_spec::event::FaultReason;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::EmulatedHost;
use crate::host::{Access, Fault, HostIommu};

impl EmulatedHost {
    /// Copies between a DMA buffer and guest memory, one translated piece at a time.
    pub(super) fn dma(
        &mut self,
        endpoint: u32,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
        access: Access,
        mut copy: impl FnMut(&GuestMemoryMmap, usize, usize, GuestAddress) -> usize,
    ) -> Result<(), Fault> {
        let mem = self.mem.clone();
        let guard = mem.as_ref().map(GuestMemoryAtomic::memory);
        let mut done = 0usize;
        let mut cur = iova;
        while done < len {
            let want = u64::try_from(len - done).unwrap_or(u64::MAX);
            let piece = self.translate(endpoint, pasid, cur, want, access)?;
            // `piece.len` ≤ `want`, which came from a usize.
            let n = usize::try_from(piece.len).unwrap_or(len - done);
            let copied = match &guard {
                Some(m) => copy(m, done, n, GuestAddress(piece.gpa)),
                None => 0,
            };
            if copied < n {
                let at = cur.wrapping_add(u64::try_from(copied).unwrap_or(0));
                debug!("dma: endpoint {endpoint} iova {at:#x}: translated outside guest RAM");
                return Err(Fault {
                    reason: FaultReason::Unknown,
                    address: at,
                });
            }
            done += n;
            if done < len {
                // Past the top of the input space there is nothing to translate.
                cur = cur.checked_add(piece.len).ok_or(Fault {
                    reason: FaultReason::Mapping,
                    address: u64::MAX,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::emulated::test_support::{host, RW};
    use vm_memory::Bytes;

    #[test]
    fn dma_splits_across_mappings_and_faults_outside_ram() {
        let (mut h, s) = host();
        // IOVA 0x1000..0x2fff → two discontiguous guest pages.
        h.map(s, 0x1000, 0x1fff, 0x3_0000, RW).unwrap();
        h.map(s, 0x2000, 0x2fff, 0x1_0000, RW).unwrap();
        let data: Vec<u8> = (0..0x20u8).collect();
        h.dma_write(7, None, 0x1ff0, &data).unwrap();
        let g = h.mem.as_ref().unwrap().memory();
        let mut a = [0u8; 0x10];
        g.read_slice(&mut a, GuestAddress(0x3_0ff0)).unwrap();
        assert_eq!(&a[..], &data[..0x10]);
        g.read_slice(&mut a, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(&a[..], &data[0x10..]);
        drop(g);
        let mut back = [0u8; 0x20];
        h.dma_read(7, None, 0x1ff0, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        // Running off the end of the second mapping faults at the first unmapped byte.
        let mut big = [0u8; 0x20];
        assert_eq!(
            h.dma_read(7, None, 0x2ff0, &mut big),
            Err(Fault {
                reason: FaultReason::Mapping,
                address: 0x3000
            })
        );
        // Mapped, but to a hole in guest RAM.
        h.map(s, 0x5000, 0x5fff, 0x2_0000, RW).unwrap();
        assert_eq!(
            h.dma_write(7, None, 0x5008, &data),
            Err(Fault {
                reason: FaultReason::Unknown,
                address: 0x5008
            })
        );
    }
}
