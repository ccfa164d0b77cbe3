//! On-disk framing: segment headers, record headers, record payloads.
//!
//! All integers are little-endian. A segment file is
//! `SEGMENT_HEADER` bytes of header followed by records, then zeros up to the
//! preallocated size. A record is a 24-byte header and its payload:
//!
//! ```text
//! hcrc u32 | pcrc u32 | len u32 | kind u8 | flags u8 | reserved u16 | lsn u64 | payload[len]
//! ```
//!
//! `hcrc` is the CRC-32 of header bytes 4..24 (so a length is trusted only when
//! its header checks), `pcrc` the CRC-32 of the payload. An all-zero header marks
//! the end of the written part of a segment (a valid record has `lsn >= 1`).

use super::{DefClass, MsgId, QueueId, QueueSet};

/// Magic at the start of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"WRNSTOR1";
/// Format version in the segment header.
pub(super) const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header.
pub(super) const SEGMENT_HEADER: usize = 32;
/// Size of a record header.
pub(super) const RECORD_HEADER: usize = 24;

/// Record kinds.
pub(super) mod kind {
    /// A new message: queues, opaque meta, body. Its id is its LSN.
    pub const PUBLISH: u8 = 1;
    /// A live message copied forward by compaction: id, queues with delivery counts, meta, body.
    pub const RELOCATED: u8 = 2;
    /// Messages settled (acked, rejected, expired, dead-lettered away) in one queue.
    pub const SETTLE: u8 = 3;
    /// A message's delivery count in one queue.
    pub const DELIVERED: u8 = 4;
    /// Every message published to a queue before this record is settled there.
    pub const PURGE: u8 = 5;
    /// A definition (class, key) now has this value.
    pub const DEF_PUT: u8 = 6;
    /// A definition (class, key) is gone.
    pub const DEF_DEL: u8 = 7;
}

pub(super) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The segment header for segment `seq`.
pub(super) fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let c = crc(&h[0..28]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// Checks a segment header; returns its sequence number.
pub(super) fn parse_segment_header(h: &[u8]) -> Result<u64, &'static str> {
    if h.len() < SEGMENT_HEADER {
        return Err("file shorter than a segment header");
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if le32(&h[28..32]) != crc(&h[0..28]) {
        return Err("segment header checksum mismatch");
    }
    if le32(&h[8..12]) != SEGMENT_VERSION {
        return Err("unsupported segment format version");
    }
    Ok(le64(&h[16..24]))
}

pub(super) fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
pub(super) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
pub(super) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    u64::from_le_bytes(a)
}

/// A decoded record header.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecordHeader {
    pub pcrc: u32,
    pub len: u32,
    pub kind: u8,
    pub lsn: u64,
}

/// What the bytes at a record position hold.
pub(super) enum HeaderCheck {
    /// All zero: nothing was written here.
    Zero,
    /// The header checksum fails: nothing in it (not even the length) can be trusted.
    Bad,
    /// A header whose checksum holds.
    Ok(RecordHeader),
}

pub(super) fn check_header(h: &[u8]) -> HeaderCheck {
    debug_assert!(h.len() >= RECORD_HEADER);
    if h[..RECORD_HEADER].iter().all(|&b| b == 0) {
        return HeaderCheck::Zero;
    }
    if le32(&h[0..4]) != crc(&h[4..RECORD_HEADER]) {
        return HeaderCheck::Bad;
    }
    HeaderCheck::Ok(RecordHeader {
        pcrc: le32(&h[4..8]),
        len: le32(&h[8..12]),
        kind: h[12],
        lsn: le64(&h[16..24]),
    })
}

/// Appends one framed record to `buf`; `payload` writes the payload bytes.
pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    kind: u8,
    lsn: u64,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.resize(start + RECORD_HEADER, 0);
    payload(buf);
    let len = (buf.len() - start - RECORD_HEADER) as u32;
    let pcrc = crc(&buf[start + RECORD_HEADER..]);
    let h = &mut buf[start..start + RECORD_HEADER];
    h[4..8].copy_from_slice(&pcrc.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12] = kind;
    h[13] = 0;
    h[14..16].copy_from_slice(&0u16.to_le_bytes());
    h[16..24].copy_from_slice(&lsn.to_le_bytes());
    let hcrc = crc(&h[4..RECORD_HEADER]);
    h[0..4].copy_from_slice(&hcrc.to_le_bytes());
}

/// Payload length of a publish record.
pub(super) fn publish_len(queues: usize, meta: usize, body: usize) -> usize {
    2 + 8 * queues + 4 + meta + body
}

pub(super) fn put_publish(buf: &mut Vec<u8>, queues: &[QueueId], meta: &[u8], body: &[u8]) {
    buf.extend_from_slice(&(queues.len() as u16).to_le_bytes());
    for q in queues {
        buf.extend_from_slice(&q.to_le_bytes());
    }
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(meta);
    buf.extend_from_slice(body);
}

pub(super) fn relocated_len(queues: usize, meta: usize, body: usize) -> usize {
    8 + 2 + 12 * queues + 4 + meta + body
}

pub(super) fn put_relocated(
    buf: &mut Vec<u8>,
    id: MsgId,
    queues: &QueueSet,
    meta: &[u8],
    body: &[u8],
) {
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&(queues.len() as u16).to_le_bytes());
    for (q, count) in queues.iter() {
        buf.extend_from_slice(&q.to_le_bytes());
        buf.extend_from_slice(&count.to_le_bytes());
    }
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(meta);
    buf.extend_from_slice(body);
}

pub(super) fn put_settle(buf: &mut Vec<u8>, queue: QueueId, ids: &[MsgId]) {
    buf.extend_from_slice(&queue.to_le_bytes());
    buf.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        buf.extend_from_slice(&id.to_le_bytes());
    }
}

pub(super) fn put_def(buf: &mut Vec<u8>, class: DefClass, key: &[u8], value: Option<&[u8]>) {
    buf.push(class.0);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    if let Some(v) = value {
        buf.extend_from_slice(v);
    }
}

/// A decoded record payload, borrowing from the segment bytes.
#[derive(Debug)]
pub(super) enum Record<'a> {
    Publish {
        queues: QueueSet,
        meta: &'a [u8],
        body: &'a [u8],
    },
    Relocated {
        id: MsgId,
        queues: QueueSet,
        meta: &'a [u8],
        body: &'a [u8],
    },
    Settle {
        queue: QueueId,
        ids: &'a [u8],
    },
    Delivered {
        queue: QueueId,
        id: MsgId,
        count: u32,
    },
    Purge {
        queue: QueueId,
    },
    DefPut {
        class: DefClass,
        key: &'a [u8],
        value: &'a [u8],
    },
    DefDel {
        class: DefClass,
        key: &'a [u8],
    },
}

/// A cursor that fails (rather than panics) when the payload is short.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("payload shorter than its fields");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(le16(self.take(2)?))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(le32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(le64(self.take(8)?))
    }
}

/// Decodes a payload whose checksum already held.
pub(super) fn decode(kind: u8, payload: &[u8]) -> Result<Record<'_>, &'static str> {
    let mut c = Cur(payload);
    Ok(match kind {
        kind::PUBLISH => {
            let n = c.u16()? as usize;
            let queues = if n == 1 {
                QueueSet::One((c.u64()?, 0))
            } else {
                let mut qs = Vec::with_capacity(n);
                for _ in 0..n {
                    qs.push((c.u64()?, 0));
                }
                QueueSet::from_vec(qs)
            };
            let ml = c.u32()? as usize;
            let meta = c.take(ml)?;
            Record::Publish {
                queues,
                meta,
                body: c.0,
            }
        }
        kind::RELOCATED => {
            let id = c.u64()?;
            let n = c.u16()? as usize;
            let mut qs = Vec::with_capacity(n);
            for _ in 0..n {
                qs.push((c.u64()?, c.u32()?));
            }
            let ml = c.u32()? as usize;
            let meta = c.take(ml)?;
            Record::Relocated {
                id,
                queues: QueueSet::from_vec(qs),
                meta,
                body: c.0,
            }
        }
        kind::SETTLE => {
            let queue = c.u64()?;
            let n = c.u32()? as usize;
            let ids = c.take(n.checked_mul(8).ok_or("settle count overflows")?)?;
            Record::Settle { queue, ids }
        }
        kind::DELIVERED => Record::Delivered {
            queue: c.u64()?,
            id: c.u64()?,
            count: c.u32()?,
        },
        kind::PURGE => Record::Purge { queue: c.u64()? },
        kind::DEF_PUT | kind::DEF_DEL => {
            let class = DefClass(c.u8()?);
            let kl = c.u32()? as usize;
            let key = c.take(kl)?;
            if kind == kind::DEF_PUT {
                Record::DefPut {
                    class,
                    key,
                    value: c.0,
                }
            } else {
                Record::DefDel { class, key }
            }
        }
        _ => return Err("unknown record kind"),
    })
}

/// The message ids of a settle record.
pub(super) fn settle_ids(ids: &[u8]) -> impl Iterator<Item = MsgId> + '_ {
    ids.chunks_exact(8).map(le64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode_record(&mut buf, kind::PUBLISH, 7, |b| {
            put_publish(b, &[3, 4], b"meta", b"body")
        });
        let HeaderCheck::Ok(h) = check_header(&buf) else {
            panic!("header does not check")
        };
        assert_eq!(
            (h.kind, h.lsn, h.len as usize),
            (kind::PUBLISH, 7, buf.len() - RECORD_HEADER)
        );
        assert_eq!(h.pcrc, crc(&buf[RECORD_HEADER..]));
        match decode(h.kind, &buf[RECORD_HEADER..]) {
            Ok(Record::Publish { queues, meta, body }) => {
                assert_eq!(queues.iter().collect::<Vec<_>>(), vec![(3, 0), (4, 0)]);
                assert_eq!((meta, body), (&b"meta"[..], &b"body"[..]));
            }
            other => panic!("decoded {other:?}"),
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let caught = match check_header(&b) {
                HeaderCheck::Ok(h) => h.pcrc != crc(&b[RECORD_HEADER..]),
                _ => true,
            };
            assert!(caught, "flipping bit {bit} went unnoticed");
        }
    }

    #[test]
    fn a_short_payload_is_an_error_not_a_panic() {
        for kind in 1..=8u8 {
            for len in 0..12 {
                let _ = decode(kind, &vec![0xff; len]);
            }
        }
        assert!(decode(kind::SETTLE, &[0; 12][..]).is_ok());
        assert!(decode(kind::SETTLE, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]).is_err());
    }
}
