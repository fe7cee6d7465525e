//! One journal record (PROTOCOL.md §13.3): kind, payload length, payload, CRC-32 of the three.

use super::ring_marks::RingMarks;

/// Kind, 16-bit payload length.
const HEAD_LEN: usize = 3;
/// The CRC-32 after the payload.
const CRC_LEN: usize = 4;
/// The largest payload (a REQUEST with the readable part the queue gathers, 128 bytes, is far
/// below it).
pub const MAX_PAYLOAD: usize = 512;

const REQUEST: u8 = 1;
const CONFIG: u8 = 2;
const FEATURES: u8 = 3;
const RESET: u8 = 4;
const RINGS: u8 = 5;
const ANSWERED: u8 = 6;

/// A request the device answered: where it sat in the request ring and what it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Its avail-ring position.
    pub pos: u16,
    /// Its chain head.
    pub head: u16,
    /// The used length reported.
    pub used: u32,
    /// The status in the reply's tail.
    pub status: u8,
}

/// What changed the device's state, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A request other than PROBE that got a reply: replayed through the engine on recovery.
    Request(Answer, Vec<u8>),
    /// A config-space write the device accepted.
    Config(u32, Vec<u8>),
    /// The features the driver accepted.
    Features(u64),
    /// A guest reset of the device.
    Reset,
    /// Where the rings were when the device last (re)started them.
    Rings(RingMarks),
    /// A request answered before the last compaction whose used entry the guest may not have
    /// seen: not replayed, only answered again.
    Answered(Answer),
}

fn put_answer(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(&a.pos.to_le_bytes());
    out.extend_from_slice(&a.head.to_le_bytes());
    out.extend_from_slice(&a.used.to_le_bytes());
    out.push(a.status);
}

fn answer(p: &[u8]) -> Option<Answer> {
    Some(Answer {
        pos: u16::from_le_bytes(p.get(0..2)?.try_into().ok()?),
        head: u16::from_le_bytes(p.get(2..4)?.try_into().ok()?),
        used: u32::from_le_bytes(p.get(4..8)?.try_into().ok()?),
        status: *p.get(8)?,
    })
}

const ANSWER_LEN: usize = 9;

/// How a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Fewer bytes than the record claims, or a CRC mismatch: the tail of a write the daemon
    /// did not finish.
    Torn,
    /// A complete record (its CRC holds) of an unknown kind or with a malformed payload.
    Malformed(u8),
}

/// Closes the record opened at `start` (its head reserved): kind, length, CRC.
fn seal(out: &mut Vec<u8>, start: usize, kind: u8) {
    let len = out.len() - start - HEAD_LEN;
    debug_assert!(len <= MAX_PAYLOAD);
    out[start] = kind;
    // Payloads are bounded by their callers (readable part ≤ 128, config ≤ 40 bytes).
    out[start + 1..start + HEAD_LEN]
        .copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends a REQUEST record without building a [`Record`] (the per-request path: no
/// allocation).
pub fn encode_request(out: &mut Vec<u8>, a: &Answer, readable: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD_LEN]);
    put_answer(out, a);
    out.extend_from_slice(readable);
    seal(out, start, REQUEST);
}

impl Record {
    /// Appends the record's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEAD_LEN]);
        let kind = match self {
            Record::Request(a, readable) => {
                put_answer(out, a);
                out.extend_from_slice(readable);
                REQUEST
            }
            Record::Config(offset, data) => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
                CONFIG
            }
            Record::Features(f) => {
                out.extend_from_slice(&f.to_le_bytes());
                FEATURES
            }
            Record::Reset => RESET,
            Record::Rings(m) => {
                m.encode_into(out);
                RINGS
            }
            Record::Answered(a) => {
                put_answer(out, a);
                ANSWERED
            }
        };
        seal(out, start, kind);
    }

    /// Reads the record at the start of `bytes`; returns it and its size.
    ///
    /// # Errors
    /// A [`ReadEnd`] saying why reading stops here.
    pub fn decode(bytes: &[u8]) -> Result<(Record, usize), ReadEnd> {
        let head = bytes.get(..HEAD_LEN).ok_or(ReadEnd::Torn)?;
        let kind = head[0];
        let len = usize::from(u16::from_le_bytes([head[1], head[2]]));
        let total = HEAD_LEN + len + CRC_LEN;
        let all = bytes.get(..total).ok_or(ReadEnd::Torn)?;
        let (body, crc) = all.split_at(HEAD_LEN + len);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(ReadEnd::Torn);
        }
        let p = &body[HEAD_LEN..];
        let bad = ReadEnd::Malformed(kind);
        let record = match kind {
            REQUEST => Record::Request(answer(p).ok_or(bad)?, p[ANSWER_LEN..].to_vec()),
            CONFIG if p.len() >= 4 => Record::Config(
                u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
                p[4..].to_vec(),
            ),
            FEATURES if p.len() == 8 => {
                Record::Features(u64::from_le_bytes(p.try_into().map_err(|_| bad)?))
            }
            RESET if p.is_empty() => Record::Reset,
            RINGS => Record::Rings(RingMarks::decode(p).ok_or(bad)?),
            ANSWERED if p.len() == ANSWER_LEN => Record::Answered(answer(p).ok_or(bad)?),
            _ => return Err(bad),
        };
        Ok((record, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        let a = Answer {
            pos: 0xfffe,
            head: 7,
            used: 4,
            status: 0,
        };
        vec![
            Record::Request(a, vec![3; 64]),
            Record::Config(36, vec![0]),
            Record::Features(0x1_0000_0037),
            Record::Reset,
            Record::Rings(RingMarks {
                next_avail: [5, 9],
                addrs: Some([[1, 2, 3], [4, 5, 6]]),
            }),
            Record::Rings(RingMarks::default()),
            Record::Answered(Answer { status: 3, ..a }),
        ]
    }

    #[test]
    fn records_read_back_as_written() {
        let mut bytes = Vec::new();
        for r in samples() {
            r.encode_into(&mut bytes);
        }
        let mut at = 0;
        for want in samples() {
            let (got, n) = Record::decode(&bytes[at..]).unwrap();
            assert_eq!(got, want);
            at += n;
        }
        assert_eq!(at, bytes.len());
    }

    #[test]
    fn a_cut_or_damaged_record_is_torn_and_an_unknown_kind_malformed() {
        let mut bytes = Vec::new();
        Record::Config(36, vec![1]).encode_into(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(
                Record::decode(&bytes[..cut]),
                Err(ReadEnd::Torn),
                "cut {cut}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[4] ^= 1;
        assert_eq!(Record::decode(&flipped), Err(ReadEnd::Torn));
        // A well-formed record of kind 99 and a RESET with a payload.
        let mut odd = vec![99, 0, 0];
        odd.extend_from_slice(&crc32fast::hash(&odd).to_le_bytes());
        assert_eq!(Record::decode(&odd), Err(ReadEnd::Malformed(99)));
        let mut reset = vec![RESET, 1, 0, 0];
        reset.extend_from_slice(&crc32fast::hash(&reset).to_le_bytes());
        assert_eq!(Record::decode(&reset), Err(ReadEnd::Malformed(RESET)));
    }
}
