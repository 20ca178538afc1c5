//! `--output FILE`: JSON Lines appended to a file (created 0600 if missing).

use std::{fs::OpenOptions, io::BufWriter, os::unix::fs::OpenOptionsExt, path::Path};

use super::{JsonLines, SinkError};

pub fn open(path: &Path) -> Result<JsonLines<BufWriter<std::fs::File>>, SinkError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SinkError::Io {
            target: path.display().to_string(),
            source,
        })?;
    Ok(JsonLines::new(
        BufWriter::new(file),
        path.display().to_string(),
    ))
}
