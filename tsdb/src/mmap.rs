//! Read-only memory maps of block files, exposed as [`bytes::Bytes`] so chunk data and
//! index sections can be sliced and handed out without copying.
//!
//! This module holds the crate's only `unsafe` code.

use std::fs::File;
use std::path::Path;

use bytes::Bytes;

use crate::{Result, TsdbError};

/// Maps `path` read-only and returns its contents. An empty file gives empty bytes
/// (mapping a zero-length file is an error on some platforms).
pub fn map_file(path: &Path) -> Result<Bytes> {
    let f = File::open(path).map_err(TsdbError::io("open", path))?;
    let len = f.metadata().map_err(TsdbError::io("stat", path))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a mapping is only unsound if the file changes underneath it. We map files
    // of completed blocks only (index, chunk segments), which are written in a temporary
    // directory, fsynced, and renamed into place; nothing in this crate ever writes to
    // them again, and deletion unlinks the file without truncating it, so the mapped pages
    // stay valid for as long as the `Bytes` lives. Another process truncating a block file
    // behind our back would break this, as it would for Prometheus.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(TsdbError::io("mmap", path))?;
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_contents_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let b = map_file(&p).unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(&b.slice(1..3)[..], b"el");
        std::fs::write(&p, b"").unwrap();
        assert!(map_file(&p).unwrap().is_empty());
        assert!(matches!(map_file(&dir.path().join("missing")), Err(TsdbError::Io { .. })));
    }
}
