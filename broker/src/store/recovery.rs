//! Opening a data directory: replay the segments, rebuild the live state, drop a torn
//! tail, pick the head segment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use super::format::{
    self, check_header, HeaderCheck, Record, RecordHeader, RECORD_HEADER, SEGMENT_HEADER,
};
use super::fsutil::{self, io_err};
use super::writer::Head;
use super::{
    DefClass, DefEntry, Entry, IdMap, Lsn, MsgId, Place, QueueId, QueueSet, Recovered,
    RecoveredDefinition, RecoveredMessage, SegStats, StoreError, StoreOptions, TornTail,
    MAX_BATCH_BYTES,
};

/// The state [`super::Store::open`] starts from.
pub(super) struct Opened {
    pub next_lsn: Lsn,
    pub msgs: IdMap<Entry>,
    pub defs: HashMap<(DefClass, Box<[u8]>), DefEntry>,
    pub segs: BTreeMap<u64, SegStats>,
    pub spares: VecDeque<(u64, File)>,
    pub next_spare_seq: u64,
    pub head: Head,
    pub recovered: Recovered,
}

/// A live message during replay.
struct RMsg {
    rec_lsn: Lsn,
    place: Place,
    queues: QueueSet,
    data: Vec<u8>,
    meta_len: u32,
}

/// A live definition during replay: record LSN, place, value.
type RDef = (Lsn, Place, Vec<u8>);

#[derive(Default)]
struct Replay {
    msgs: IdMap<RMsg>,
    defs: HashMap<(DefClass, Box<[u8]>), RDef>,
    purges: HashMap<QueueId, Lsn>,
    segs: BTreeMap<u64, SegStats>,
    records: u64,
    bytes: u64,
}

impl Replay {
    fn apply(
        &mut self,
        h: &RecordHeader,
        place: Place,
        payload: &[u8],
    ) -> Result<(), &'static str> {
        let rec = format::decode(h.kind, payload)?;
        let s = self.segs.entry(place.seq).or_default();
        s.records += 1;
        s.written += u64::from(place.len);
        self.records += 1;
        self.bytes += u64::from(place.len);
        let body_of = |meta: &[u8], body: &[u8]| {
            // meta and body are contiguous at the end of the payload.
            let start = payload.len() - meta.len() - body.len();
            (payload[start..].to_vec(), meta.len() as u32)
        };
        match rec {
            Record::Publish { queues, meta, body } => {
                let (data, meta_len) = body_of(meta, body);
                self.msgs.insert(
                    h.lsn,
                    RMsg {
                        rec_lsn: h.lsn,
                        place,
                        queues,
                        data,
                        meta_len,
                    },
                );
            }
            Record::Relocated {
                id,
                queues,
                meta,
                body,
            } => {
                let (data, meta_len) = body_of(meta, body);
                self.msgs.insert(
                    id,
                    RMsg {
                        rec_lsn: h.lsn,
                        place,
                        queues,
                        data,
                        meta_len,
                    },
                );
            }
            Record::Settle { queue, ids } => {
                for id in format::settle_ids(ids) {
                    let gone = match self.msgs.get_mut(&id) {
                        Some(m) => m.queues.remove(queue) && m.queues.is_empty(),
                        None => false,
                    };
                    if gone {
                        self.msgs.remove(&id);
                    }
                }
            }
            Record::Delivered { queue, id, count } => {
                if let Some(m) = self.msgs.get_mut(&id) {
                    m.queues.set_count(queue, count);
                }
            }
            Record::Purge { queue } => {
                self.purges.insert(queue, h.lsn);
            }
            Record::DefPut { class, key, value } => {
                self.defs
                    .insert((class, key.into()), (h.lsn, place, value.to_vec()));
            }
            Record::DefDel { class, key } => {
                self.defs.remove(&(class, Box::from(key)));
            }
        }
        Ok(())
    }
}

/// Where and why a segment's records end.
struct ScanEnd {
    /// End of the last good record.
    end: usize,
    /// Why the records stop there, if not at a clean end.
    damage: Option<&'static str>,
    /// The damaged record's extent, when its header checks.
    extent: Option<usize>,
    /// A record with good checksums that does not decode: never a tear.
    undecodable: bool,
}

fn scan(data: &[u8], seq: u64, last_lsn: &mut Lsn, replay: &mut Replay) -> ScanEnd {
    let mut pos = SEGMENT_HEADER;
    let end = |pos, damage, extent| ScanEnd {
        end: pos,
        damage,
        extent,
        undecodable: false,
    };
    loop {
        if pos + RECORD_HEADER > data.len() {
            return if data[pos.min(data.len())..].iter().all(|&b| b == 0) {
                end(pos, None, None)
            } else {
                end(
                    pos,
                    Some("partial record header at the end of the file"),
                    None,
                )
            };
        }
        let h = match check_header(&data[pos..]) {
            HeaderCheck::Zero => return end(pos, None, None),
            HeaderCheck::Bad => return end(pos, Some("record header checksum mismatch"), None),
            HeaderCheck::Ok(h) => h,
        };
        let ext = RECORD_HEADER + h.len as usize;
        if pos + ext > data.len() {
            return end(
                pos,
                Some("record extends past the end of the file"),
                Some(ext),
            );
        }
        if h.lsn <= *last_lsn {
            return end(
                pos,
                Some("record sequence number does not increase"),
                Some(ext),
            );
        }
        let payload = &data[pos + RECORD_HEADER..pos + ext];
        if format::crc(payload) != h.pcrc {
            return end(pos, Some("record payload checksum mismatch"), Some(ext));
        }
        let place = Place {
            seq,
            offset: pos as u32,
            len: ext as u32,
        };
        if let Err(reason) = replay.apply(&h, place, payload) {
            return ScanEnd {
                end: pos,
                damage: Some(reason),
                extent: Some(ext),
                undecodable: true,
            };
        }
        *last_lsn = h.lsn;
        pos += ext;
    }
}

/// Sector size assumed atomic: a torn write leaves whole sectors unwritten (zero).
const SECTOR: usize = 512;

/// Whether the damaged record at `at` shows unwritten space: an all-zero header, a
/// record cut off by the end of the file, or an all-zero sector-aligned stretch.
fn has_hole(data: &[u8], at: usize, extent: Option<usize>) -> bool {
    let rest = &data[at.min(data.len())..];
    if rest.len() < RECORD_HEADER || rest[..RECORD_HEADER].iter().all(|&b| b == 0) {
        return true;
    }
    let end = match extent {
        Some(ext) if at + ext > data.len() => return true,
        Some(ext) => at + ext,
        None => at + RECORD_HEADER,
    };
    let mut s = at;
    while s < end {
        let next = (s / SECTOR + 1) * SECTOR;
        if data[s..next.min(end)].iter().all(|&b| b == 0) {
            return true;
        }
        s = next;
    }
    false
}

/// Whether a valid record (both checksums, a higher LSN) starts anywhere in `(at, end)`.
fn valid_record_after(data: &[u8], at: usize, end: usize, last_lsn: Lsn) -> bool {
    let end = end.min(data.len());
    (at + 1..end.saturating_sub(RECORD_HEADER - 1)).any(|p| match check_header(&data[p..]) {
        HeaderCheck::Ok(h) => {
            let ext = RECORD_HEADER + h.len as usize;
            h.lsn > last_lsn
                && h.kind != 0
                && p + ext <= data.len()
                && format::crc(&data[p + RECORD_HEADER..p + ext]) == h.pcrc
        }
        _ => false,
    })
}

/// Whether segment `seq` holds at least one record (its first header is not all zero).
fn has_records(dir: &Path, seq: u64) -> Result<bool, StoreError> {
    let path = fsutil::segment_path(dir, seq);
    let mut f = File::open(&path).map_err(|e| io_err("open segment", &path, e))?;
    let mut b = Vec::new();
    (&mut f)
        .take((SEGMENT_HEADER + RECORD_HEADER) as u64)
        .read_to_end(&mut b)
        .map_err(|e| io_err("read segment", &path, e))?;
    Ok(b.get(SEGMENT_HEADER..)
        .is_some_and(|r| r.iter().any(|&x| x != 0)))
}

fn zero_range(path: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    let f = fsutil::open_segment(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let n = (to - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)
            .map_err(|e| io_err("zero torn tail", path, e))?;
        off += n as u64;
    }
    f.sync_data().map_err(|e| io_err("fdatasync", path, e))
}

pub(super) fn recover(dir: &Path, opts: &StoreOptions) -> Result<Opened, StoreError> {
    let started = Instant::now();
    let clean_path = dir.join(fsutil::CLEAN_FILE);
    let clean_shutdown = clean_path.exists();

    let mut seqs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".seg.tmp") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
        } else if let Some(seq) = fsutil::segment_seq(name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();

    let mut replay = Replay::default();
    let mut last_lsn: Lsn = 0;
    // (seq, end of records, file length) of each segment holding records.
    let mut data_segs: Vec<(u64, usize, u64)> = Vec::new();
    let mut empty_segs: Vec<(u64, u64)> = Vec::new();
    let mut torn_tail = None;
    let mut idx = 0;
    while idx < seqs.len() {
        let seq = seqs[idx];
        idx += 1;
        let path = fsutil::segment_path(dir, seq);
        let data = fsutil::read_file(&path)?;
        let corrupt = |offset: usize, reason, after: usize| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
            after: after as u64,
        };
        match format::parse_segment_header(&data) {
            Ok(s) if s == seq => {}
            Ok(_) => {
                return Err(corrupt(
                    0,
                    "segment header names another sequence number",
                    data.len(),
                ))
            }
            Err(reason) => return Err(corrupt(0, reason, data.len())),
        }
        if idx >= 2 && seq != seqs[idx - 2] + 1 && !opts.repair {
            return Err(corrupt(
                0,
                "a segment before this one is missing",
                data.len(),
            ));
        }
        let s = scan(&data, seq, &mut last_lsn, &mut replay);
        let nonzero_end = data
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p + 1)
            .max(SEGMENT_HEADER);
        if s.damage.is_none() && nonzero_end <= s.end {
            if s.end > SEGMENT_HEADER {
                data_segs.push((seq, s.end, data.len() as u64));
            } else {
                empty_segs.push((seq, data.len() as u64));
            }
            continue;
        }
        // Damage, or data after the zero end of the log.
        let reason = s.damage.unwrap_or("data after the end of the log");
        let mut later_data = false;
        for &later in &seqs[idx..] {
            later_data |= has_records(dir, later)?;
        }
        let window = MAX_BATCH_BYTES.max(s.extent.unwrap_or(0));
        let within = nonzero_end <= s.end + window;
        // A crash leaves unwritten sectors zero (the file was zero-filled): a hole in
        // the damaged record is a tear even if later records of the same write reached
        // the disk. Without a hole, only the last record can be torn: damage followed
        // by a valid record is corruption.
        let torn = !s.undecodable
            && !later_data
            && within
            && (has_hole(&data, s.end, s.extent)
                || !valid_record_after(&data, s.end, nonzero_end, last_lsn));
        let dropped = (nonzero_end - s.end) as u64;
        if !torn && !opts.repair {
            return Err(corrupt(s.end, reason, nonzero_end - s.end));
        }
        if torn {
            tracing::warn!(segment = %path.display(), offset = s.end, bytes = dropped, reason,
                "dropping the torn tail of the log (a write cut short by a crash; it was never confirmed)");
        } else {
            tracing::error!(segment = %path.display(), offset = s.end, bytes = dropped, reason, later_segments_dropped = later_data,
                "repair: truncating the log at corrupt data; everything after it is lost");
        }
        zero_range(&path, s.end as u64, nonzero_end as u64)?;
        torn_tail = Some(TornTail {
            path: path.clone(),
            offset: s.end as u64,
            bytes: dropped,
            reason,
            repaired: !torn,
        });
        if s.end > SEGMENT_HEADER {
            data_segs.push((seq, s.end, data.len() as u64));
        } else {
            empty_segs.push((seq, data.len() as u64));
        }
        for &later in &seqs[idx..] {
            let p = fsutil::segment_path(dir, later);
            if has_records(dir, later)? {
                std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
            } else {
                let len = std::fs::metadata(&p)
                    .map_err(|e| io_err("stat", &p, e))?
                    .len();
                empty_segs.push((later, len));
            }
        }
        fsutil::sync_dir(dir)?;
        break;
    }

    // Empty segments before the last data segment are leftovers: remove them.
    let last_data = data_segs.last().copied();
    let mut trailing = Vec::new();
    let mut removed = false;
    for (seq, len) in empty_segs {
        if last_data.is_some_and(|(d, _, _)| seq < d) || len != opts.segment_size {
            let p = fsutil::segment_path(dir, seq);
            std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
            removed = true;
        } else {
            trailing.push(seq);
        }
    }

    // The head: continue the newest data segment if it is preallocated, else the
    // next empty one, else a new one.
    let max_seq = seqs.iter().copied().max().unwrap_or(0);
    let head = match last_data {
        Some((seq, end, len)) if len == opts.segment_size && (end as u64) < len => Head {
            seq,
            file: fsutil::open_segment(&fsutil::segment_path(dir, seq))?,
            offset: end as u64,
        },
        _ => {
            let want = last_data.map_or(1, |(s, _, _)| s + 1);
            if trailing.first() == Some(&want) {
                trailing.remove(0);
                Head {
                    seq: want,
                    file: fsutil::open_segment(&fsutil::segment_path(dir, want))?,
                    offset: SEGMENT_HEADER as u64,
                }
            } else {
                for seq in trailing.drain(..) {
                    let p = fsutil::segment_path(dir, seq);
                    std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
                    removed = true;
                }
                let seq = want.max(max_seq + 1);
                Head {
                    seq,
                    file: fsutil::prepare_segment(dir, seq, opts.segment_size)?,
                    offset: SEGMENT_HEADER as u64,
                }
            }
        }
    };
    // Remaining empty segments become spares if they follow the head in sequence.
    let mut spares = VecDeque::new();
    let mut next = head.seq + 1;
    for seq in trailing {
        let p = fsutil::segment_path(dir, seq);
        if seq == next {
            spares.push_back((seq, fsutil::open_segment(&p)?));
            next += 1;
        } else {
            std::fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
            removed = true;
        }
    }

    // Finish the replay: purges, live accounting, the caller's view.
    let Replay {
        msgs,
        defs,
        purges,
        mut segs,
        records,
        bytes,
    } = replay;
    for (seq, s) in segs.iter_mut() {
        s.sealed = *seq != head.seq;
    }
    segs.entry(head.seq).or_default();
    let mut live: Vec<(MsgId, RMsg)> = msgs
        .into_iter()
        .filter_map(|(id, mut m)| {
            m.queues.retain(|q| purges.get(&q).is_none_or(|&p| id > p));
            (!m.queues.is_empty()).then_some((id, m))
        })
        .collect();
    live.sort_unstable_by_key(|(id, _)| *id);
    let mut index = IdMap::with_capacity_and_hasher(live.len(), Default::default());
    let mut messages = Vec::with_capacity(live.len());
    for (id, m) in live {
        if let Some(s) = segs.get_mut(&m.place.seq) {
            s.live_records += 1;
            s.live_bytes += u64::from(m.place.len);
        }
        index.insert(
            id,
            Entry {
                rec_lsn: m.rec_lsn,
                place: Some(m.place),
                queues: m.queues.clone(),
            },
        );
        messages.push(RecoveredMessage {
            id,
            queues: m.queues,
            data: Bytes::from(m.data),
            meta_len: m.meta_len as usize,
        });
    }
    let mut def_list: Vec<_> = defs.into_iter().collect();
    def_list.sort_unstable_by_key(|(_, (lsn, _, _))| *lsn);
    let mut def_index = HashMap::with_capacity(def_list.len());
    let mut definitions = Vec::with_capacity(def_list.len());
    for ((class, key), (lsn, place, value)) in def_list {
        if let Some(s) = segs.get_mut(&place.seq) {
            s.live_records += 1;
            s.live_bytes += u64::from(place.len);
        }
        definitions.push(RecoveredDefinition {
            class,
            key: key.to_vec(),
            value,
        });
        def_index.insert(
            (class, key),
            DefEntry {
                rec_lsn: lsn,
                place: Some(place),
            },
        );
    }

    if clean_shutdown {
        std::fs::remove_file(&clean_path).map_err(|e| io_err("remove", &clean_path, e))?;
        removed = true;
    }
    if removed {
        fsutil::sync_dir(dir)?;
    }
    tracing::info!(
        dir = %dir.display(),
        segments = seqs.len(),
        records,
        messages = messages.len(),
        definitions = definitions.len(),
        clean_shutdown,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    Ok(Opened {
        next_lsn: last_lsn + 1,
        msgs: index,
        defs: def_index,
        segs,
        next_spare_seq: next,
        spares,
        head,
        recovered: Recovered {
            messages,
            definitions,
            clean_shutdown,
            torn_tail,
            segments: seqs.len(),
            records,
            bytes,
        },
    })
}
