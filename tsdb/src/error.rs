//! The one error type of the storage engine. Errors name the file and, for corrupt data,
//! the byte offset, so an operator can find the broken block.

use std::path::PathBuf;

use crate::chunkenc::ChunkError;
use crate::encoding::DecodeError;

/// Anything that can go wrong reading or writing TSDB data.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// An I/O call failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not valid.
    #[error("corrupt {path} at offset {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    /// A chunk could not be decoded.
    #[error("{path}: {source}")]
    Chunk {
        path: PathBuf,
        #[source]
        source: ChunkError,
    },
    /// The caller broke an API invariant (e.g. series added out of order).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl TsdbError {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TsdbError {
        let path = path.into();
        move |source| TsdbError::Io { op, path, source }
    }

    /// A corruption error from a decode error in `path`, whose offsets are relative to
    /// `base` within the file.
    pub fn corrupt(path: impl Into<PathBuf>, e: DecodeError) -> TsdbError {
        TsdbError::Corrupt { path: path.into(), offset: e.offset as u64, what: e.what.to_string() }
    }

    /// A corruption error with a free-form description.
    pub fn corrupt_at(path: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> TsdbError {
        TsdbError::Corrupt { path: path.into(), offset, what: what.into() }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = TsdbError> = std::result::Result<T, E>;
