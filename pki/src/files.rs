//! Small, careful file helpers: bounded reads, create-with-mode, atomic replace.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::PkiError;

/// Largest PEM file (certificate, key, CRL) read.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;
/// Largest index file read.
pub(crate) const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Mode of files holding private keys.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of files holding public material.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Reads a whole file, refusing files larger than `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, PkiError> {
    let file = fs::File::open(path).map_err(|e| PkiError::io("read", path, e))?;
    read_open_limited(file, path, limit)
}

/// Reads an already open file, refusing files larger than `limit` bytes.
pub(crate) fn read_open_limited(
    file: fs::File,
    path: &Path,
    limit: u64,
) -> Result<Vec<u8>, PkiError> {
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PkiError::io("read", path, e))?;
    if buf.len() as u64 > limit {
        return Err(PkiError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// Creates a new file with `mode` (set at creation, not afterwards) and
/// writes `bytes`; fails if the file exists.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::io("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::io("write", path, e))
}

/// Replaces `path` atomically: writes a temporary file next to it, syncs it,
/// then renames it over `path`. Readers see the old or the new content,
/// never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| PkiError::io("create", &tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| PkiError::io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| PkiError::io("replace", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a directory (and its parents) with mode 0700 if it is missing.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| PkiError::io("create directory", path, e))
}
