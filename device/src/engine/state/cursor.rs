//! A bounded little-endian reader over a stream: every read checks what is left, so a hostile
//! stream can make a read fail but never panic or reach past the end.

use super::state_error::StateError;

/// Reads fields in order from `buf`, naming `section` in its errors.
#[derive(Debug)]
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    section: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], section: &'static str) -> Self {
        Cursor { buf, section }
    }

    /// Bytes not read yet.
    pub(super) fn left(&self) -> usize {
        self.buf.len()
    }

    /// At least `n` bytes must be left (a fixed part read field by field).
    pub(super) fn expect(&self, n: u64) -> Result<(), StateError> {
        if usize::try_from(n).is_ok_and(|n| n <= self.buf.len()) {
            Ok(())
        } else {
            Err(StateError::Truncated {
                section: self.section,
                need: n,
                left: self.buf.len(),
            })
        }
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], StateError> {
        let truncated = StateError::Truncated {
            section: self.section,
            need: n,
            left: self.buf.len(),
        };
        let n = usize::try_from(n).map_err(|_| truncated.clone())?;
        if n > self.buf.len() {
            return Err(truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Eight bytes of magic.
    pub(super) fn magic(&mut self) -> Result<[u8; 8], StateError> {
        self.array()
    }

    /// A boolean byte: 0 or 1.
    pub(super) fn flag(&mut self, what: &str) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(StateError::invalid(
                self.section,
                format!("{what} is {v}, not 0 or 1"),
            )),
        }
    }

    /// `n` reserved bytes, which must be zero.
    pub(super) fn reserved(&mut self, n: u64) -> Result<(), StateError> {
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(StateError::invalid(
                self.section,
                "reserved bytes are not zero",
            ));
        }
        Ok(())
    }

    /// A record count whose records of `record` bytes each must fit in what is left: checked
    /// before anything is allocated for them.
    pub(super) fn count(&mut self, count: u64, record: u64) -> Result<usize, StateError> {
        let need = count.saturating_mul(record);
        let fits = usize::try_from(need).is_ok_and(|n| n <= self.buf.len());
        if !fits {
            return Err(StateError::Truncated {
                section: self.section,
                need,
                left: self.buf.len(),
            });
        }
        usize::try_from(count).map_err(|_| StateError::Truncated {
            section: self.section,
            need,
            left: self.buf.len(),
        })
    }

    /// The section must be read to its end.
    pub(super) fn finish(&self) -> Result<(), StateError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(StateError::Trailing {
                section: self.section,
                left: self.buf.len(),
            })
        }
    }
}
