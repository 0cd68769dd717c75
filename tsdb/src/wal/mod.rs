//! The write-ahead log, byte-compatible with Prometheus's `tsdb/wlog` (spec §7).
//!
//! A WAL directory holds segments named with 8 decimal digits, each a sequence of 32 KiB
//! pages of CRC32C-protected fragments, plus optional `checkpoint.NNNNNNNN/` directories
//! that summarise every segment up to N after a head truncation.

pub mod checkpoint;
pub mod reader;
pub mod record;
pub mod writer;

use std::path::{Path, PathBuf};

use crate::{Result, TsdbError};

pub use checkpoint::{CheckpointStats, create_checkpoint, last_checkpoint};
pub use reader::{ReadStats, SegmentReader, Truncation, read_segments};
pub use writer::Wal;

/// Size of a WAL page.
pub const PAGE_SIZE: usize = 32 * 1024;
/// Size of a fragment header: type byte, BE16 length, BE32 CRC32C.
pub const RECORD_HEADER_SIZE: usize = 7;
/// Prometheus's default segment size.
pub const DEFAULT_SEGMENT_SIZE: usize = 128 * 1024 * 1024;

/// Fragment type bits (low three bits of the header byte).
pub(crate) const FRAG_PAGE_TERM: u8 = 0;
pub(crate) const FRAG_FULL: u8 = 1;
pub(crate) const FRAG_FIRST: u8 = 2;
pub(crate) const FRAG_MIDDLE: u8 = 3;
pub(crate) const FRAG_LAST: u8 = 4;
pub(crate) const SNAPPY_FLAG: u8 = 0x08;
pub(crate) const ZSTD_FLAG: u8 = 0x10;

/// How records are compressed before fragmenting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Records are stored as they are.
    #[default]
    None,
    /// Each record is Snappy block-compressed when that makes it smaller (what a
    /// Prometheus server does by default).
    Snappy,
}

/// When the WAL forces written data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fsync` at the end of every [`Wal::log`] call, i.e. once per appender commit:
    /// a committed sample survives a power loss. The default.
    #[default]
    PerCommit,
    /// Never `fsync` while logging (only on segment switch and close); a crash of the
    /// machine may lose recent commits, a crash of the process does not.
    OnSegmentSwitch,
}

/// What a [`Wal`] has done since it was opened: how many times it was written to, what
/// it wrote and how often it synced, so tests and metrics can check that one commit is
/// one write (and at most one `fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// [`Wal::log`] calls, i.e. appender commits (and deletions) logged.
    pub writes: u64,
    /// Records logged (a series record, a samples record … each count one).
    pub records: u64,
    /// `fsync`s of segment data, at commits and at segment switches.
    pub fsyncs: u64,
}

/// WAL writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Maximum segment size; rounded up to whole pages.
    pub segment_size: usize,
    /// Record compression.
    pub compression: Compression,
    /// When to fsync.
    pub sync: SyncPolicy,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_size: DEFAULT_SEGMENT_SIZE, compression: Compression::None, sync: SyncPolicy::PerCommit }
    }
}

/// Path of segment `n` in `dir`.
pub fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}"))
}

/// The numbered segments in `dir`, ascending. Non-numeric names are ignored; a gap in
/// the numbering is an error since replay would silently skip data.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TsdbError::io("read dir", dir)(e)),
    };
    for ent in rd {
        let ent = ent.map_err(TsdbError::io("read dir", dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = name.parse::<u32>()
            && ent.file_type().map_err(TsdbError::io("stat", ent.path()))?.is_file()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    for w in out.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(TsdbError::corrupt_at(
                segment_path(dir, w[1]),
                0,
                format!("WAL segments not sequential: {:08} follows {:08}", w[1], w[0]),
            ));
        }
    }
    Ok(out)
}

/// `fsync` a directory so renames and new files in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(TsdbError::io("fsync dir", dir))
}

#[cfg(test)]
mod tests;
