//! The local spool: an append-only file of batches that could not reach PostgreSQL,
//! replayed in order when it returns, then truncated.
//!
//! File: `<state_dir>/audit/spool.log`, mode 0600. Each entry is
//! `"WSB1" | length (u32, little-endian) | SHA-256 of the payload | payload`, where the
//! payload is the batch's rows as JSON (already redacted: nothing unredacted is ever
//! written to disk). Every append is followed by `fdatasync`, so an acknowledged batch
//! survives a crash or power loss.
//!
//! A crash in the middle of an append leaves a torn last entry (short, or with a
//! checksum that does not match); [`Spool::open`] cuts it off and reports how many bytes
//! it dropped. That entry was never acknowledged as durable. Anything after a damaged
//! entry is unreachable too and is dropped with it (the error says so), because entry
//! boundaries cannot be trusted past it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::prepare::Row;

const MAGIC: &[u8; 4] = b"WSB1";
const HEADER: usize = 4 + 4 + 32;
/// The spool file's name inside the spool directory.
pub const FILE: &str = "spool.log";

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("cannot open the audit spool {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to the audit spool {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the audit spool {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit spool is full ({used} of {max} bytes; audit.spool_max_bytes)")]
    Full { used: u64, max: u64 },
    #[error("cannot encode a spool entry: {0}")]
    Encode(String),
}

/// The spool file and what is known about it.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    /// File length: every byte up to here is a complete, checked entry.
    len: u64,
    /// Entries in the file.
    entries: u64,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub entries: u64,
    pub bytes: u64,
    /// Bytes cut off a torn or damaged tail.
    pub dropped_bytes: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, checking every entry and cutting off a torn
    /// tail.
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let open_err = |source| SpoolError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(open_err)?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SpoolError::Open {
                path: path.clone(),
                source,
            })?;
        let total = file
            .metadata()
            .map_err(|source| SpoolError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let mut offset = 0u64;
        let mut entries = 0u64;
        // Stops at the end, or at the first torn or damaged entry.
        while let Ok(Some((_, next))) = read_entry(&mut file, offset, total) {
            offset = next;
            entries += 1;
        }
        let mut spool = Spool {
            path,
            file,
            len: offset,
            entries,
        };
        if offset < total {
            spool.set_len(offset)?;
        }
        Ok((
            spool,
            Recovered {
                entries,
                bytes: offset,
                dropped_bytes: total - offset,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the spool.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Encodes `rows` as one entry (for [`Spool::append`] and size checks).
    pub fn encode(rows: &[Row]) -> Result<Vec<u8>, SpoolError> {
        let payload = serde_json::to_vec(rows).map_err(|e| SpoolError::Encode(e.to_string()))?;
        let length = u32::try_from(payload.len())
            .map_err(|_| SpoolError::Encode("batch over 4 GiB".into()))?;
        let mut entry = Vec::with_capacity(HEADER + payload.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&length.to_le_bytes());
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        Ok(entry)
    }

    /// Appends an encoded entry and syncs it to disk. With `max`, refuses (leaving the
    /// file untouched) when the entry would take the spool past it. On a failed write
    /// the file is cut back to where it was.
    pub fn append(&mut self, entry: &[u8], max: Option<u64>) -> Result<(), SpoolError> {
        if let Some(max) = max
            && self.len + entry.len() as u64 > max
        {
            return Err(SpoolError::Full {
                used: self.len,
                max,
            });
        }
        let write_err = |path: &Path, source| SpoolError::Write {
            path: path.to_path_buf(),
            source,
        };
        let result = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(entry))
            .and_then(|_| self.file.sync_data());
        if let Err(source) = result {
            // Best effort: a partial entry would be cut off at the next open anyway.
            let _ = self.file.set_len(self.len);
            return Err(write_err(&self.path, source));
        }
        self.len += entry.len() as u64;
        self.entries += 1;
        Ok(())
    }

    /// The entry at `offset` and the offset after it; None at the end.
    pub fn read(&mut self, offset: u64) -> Result<Option<(Vec<Row>, u64)>, SpoolError> {
        let len = self.len;
        read_entry(&mut self.file, offset, len).map_err(|source| SpoolError::Read {
            path: self.path.clone(),
            source,
        })
    }

    /// Empties the spool (everything in it is in PostgreSQL).
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        self.set_len(0)?;
        self.entries = 0;
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<(), SpoolError> {
        self.file
            .set_len(len)
            .and_then(|_| self.file.sync_all())
            .map_err(|source| SpoolError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.len = len;
        Ok(())
    }
}

/// Reads and checks the entry at `offset`. `Ok(None)` at the end; an error for a torn or
/// damaged entry.
fn read_entry(file: &mut File, offset: u64, len: u64) -> std::io::Result<Option<(Vec<Row>, u64)>> {
    if offset >= len {
        return Ok(None);
    }
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    if len - offset < HEADER as u64 {
        return Err(bad("torn entry header"));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header)?;
    if &header[..4] != MAGIC {
        return Err(bad("bad entry magic"));
    }
    let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
    if len - offset - (HEADER as u64) < length {
        return Err(bad("torn entry payload"));
    }
    let mut payload = vec![0u8; length as usize];
    file.read_exact(&mut payload)?;
    if Sha256::digest(&payload).as_slice() != &header[8..] {
        return Err(bad("entry checksum mismatch"));
    }
    let rows: Vec<Row> = serde_json::from_slice(&payload).map_err(|e| bad(&e.to_string()))?;
    Ok(Some((rows, offset + HEADER as u64 + length)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::prepare::EventRow;
    use uuid::Uuid;

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| {
                Row::Event(EventRow {
                    id: Uuid::now_v7(),
                    trace_id: None,
                    occurred_at_us: i as i64,
                    kind: "test".into(),
                    actor_kind: "system".into(),
                    actor_id: None,
                    subject: Some(format!("row {i}")),
                    decision: None,
                    reason: None,
                    attributes: "{}".into(),
                })
            })
            .collect()
    }

    #[test]
    fn entries_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, found) = Spool::open(dir.path()).unwrap();
        assert_eq!(found, Recovered::default());
        let a = rows(3);
        let b = rows(2);
        spool.append(&Spool::encode(&a).unwrap(), None).unwrap();
        spool.append(&Spool::encode(&b).unwrap(), None).unwrap();
        drop(spool);
        let (mut spool, found) = Spool::open(dir.path()).unwrap();
        assert_eq!(found.entries, 2);
        assert_eq!(found.dropped_bytes, 0);
        let (first, next) = spool.read(0).unwrap().unwrap();
        assert_eq!(first, a);
        let (second, end) = spool.read(next).unwrap().unwrap();
        assert_eq!(second, b);
        assert!(spool.read(end).unwrap().is_none());
        spool.clear().unwrap();
        assert!(spool.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path()).unwrap();
        spool
            .append(&Spool::encode(&rows(2)).unwrap(), None)
            .unwrap();
        let good = spool.len();
        drop(spool);
        let entry = Spool::encode(&rows(5)).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all(&entry[..entry.len() / 2]).unwrap();
        drop(file);
        let (spool, found) = Spool::open(dir.path()).unwrap();
        assert_eq!(found.entries, 1);
        assert_eq!(found.dropped_bytes, (entry.len() / 2) as u64);
        assert_eq!(spool.len(), good);
    }

    #[test]
    fn a_full_spool_refuses_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path()).unwrap();
        let entry = Spool::encode(&rows(4)).unwrap();
        let max = entry.len() as u64 + 10;
        spool.append(&entry, Some(max)).unwrap();
        let err = spool.append(&entry, Some(max)).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert_eq!(spool.entries(), 1);
    }
}
