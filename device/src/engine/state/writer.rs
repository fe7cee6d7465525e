//! Little-endian output with sections whose length is filled in when they end.

/// The stream being written.
#[derive(Debug, Default)]
pub(super) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// Bytes written so far.
    pub(super) fn position(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(super) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A count as a u64 (counts come from in-memory collections: they fit).
    pub(super) fn len64(&mut self, n: usize) {
        self.u64(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A count as a u32 followed by a reserved u32. Collections of a section counted this way
    /// are bounded by the device's limits, far below 2^32.
    pub(super) fn count32(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
        self.u32(0);
    }

    /// Starts section `id`; returns where its length goes, for [`Writer::end_section`].
    pub(super) fn begin_section(&mut self, id: u32) -> usize {
        self.u32(id);
        self.u32(0);
        let at = self.buf.len();
        self.u64(0);
        at
    }

    /// Ends the section whose length goes at `at`.
    pub(super) fn end_section(&mut self, at: usize) {
        let len = self.buf.len() - at - 8;
        let len = u64::try_from(len).unwrap_or(u64::MAX).to_le_bytes();
        self.buf[at..at + 8].copy_from_slice(&len);
    }

    /// Fills in the header's total length at `at` and appends the CRC-32 of everything.
    pub(super) fn seal(mut self, at: usize) -> Vec<u8> {
        let total = self.buf.len() + 4;
        let total = u64::try_from(total).unwrap_or(u64::MAX).to_le_bytes();
        self.buf[at..at + 8].copy_from_slice(&total);
        let crc = crc32fast::hash(&self.buf);
        self.u32(crc);
        self.buf
    }
}
