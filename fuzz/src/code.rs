//! The byte code every structured target decodes its input with: fixed-width little-endian
//! fields that read as zero past the end of the input (so every byte string decodes), and the
//! writer the seeds use to produce exactly what the reader expects.

/// Reads the byte code; past the end every value reads as zero.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader over `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Reader(data)
    }

    /// Whether the input is used up.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `N` bytes (zero-padded).
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    /// Bit 0 of one byte.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// A tag byte (bit 0: present), then a `u32`.
    pub fn opt_u32(&mut self) -> Option<u32> {
        let tag = self.u8();
        let v = self.u32();
        (tag & 1 == 1).then_some(v)
    }

    /// A length byte, then that many bytes (fewer if the input ends).
    pub fn vec(&mut self) -> Vec<u8> {
        let n = usize::from(self.u8()).min(self.0.len());
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        v.to_vec()
    }
}

/// Writes the byte code [`Reader`] reads.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// The bytes written.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.0
    }

    /// Raw bytes.
    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A boolean as one byte.
    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// What [`Reader::opt_u32`] reads.
    pub fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(u8::from(v.is_some()));
        self.u32(v.unwrap_or(0));
    }

    /// What [`Reader::vec`] reads (at most 255 bytes).
    pub fn vec(&mut self, v: &[u8]) {
        let n = v.len().min(255);
        self.u8(u8::try_from(n).unwrap_or(u8::MAX));
        self.0.extend_from_slice(&v[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_padding() {
        let mut w = Writer::default();
        w.u8(7);
        w.u16(0x1234);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.opt_u32(Some(5));
        w.opt_u32(None);
        w.vec(&[1, 2, 3]);
        w.bool(true);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), 7);
        assert_eq!(r.u16(), 0x1234);
        assert_eq!(r.u32(), 0xdead_beef);
        assert_eq!(r.u64(), u64::MAX - 1);
        assert_eq!(r.opt_u32(), Some(5));
        assert_eq!(r.opt_u32(), None);
        assert_eq!(r.vec(), vec![1, 2, 3]);
        assert!(r.bool());
        assert!(r.is_empty());
        // Past the end: zeros, and an empty vector even if the length byte says more.
        assert_eq!(r.u64(), 0);
        let mut r = Reader::new(&[9, 1]);
        assert_eq!(r.vec(), vec![1]);
        assert_eq!(r.u16(), 0);
    }
}
