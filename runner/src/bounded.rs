//! Reading the files a user, another run or another tool may have put anything at: only
//! regular files (a FIFO would block, a device never ends), and never more than a limit,
//! checked while reading rather than after.
use std::io::Read;
use std::path::Path;

/// Files the runner reads that are records (metrics.json, stage.json, run.json …).
pub const RECORD_BYTES: u64 = 16 << 20;
/// A fit's per-step log: a line per step, millions of steps.
pub const STEP_LOG_BYTES: u64 = 1 << 30;

/// Why a file was not read.
#[derive(Debug)]
pub enum Refused {
    NotRegular,
    /// Its size (at least `limit + 1` where it grew while read), and the limit.
    TooLarge(u64, u64),
    Io(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotRegular => f.write_str("not a regular file (a folder, a FIFO, a device …)"),
            Refused::TooLarge(len, limit) => {
                write!(f, "the file is {len} bytes, more than the {limit} it may be")
            }
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The bytes of the regular file at `path` (symbolic links followed), at most `limit`.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, Refused> {
    let meta = std::fs::metadata(path).map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotRegular);
    }
    if meta.len() > limit {
        return Err(Refused::TooLarge(meta.len(), limit));
    }
    let file = std::fs::File::open(path).map_err(Refused::Io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(Refused::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Refused::TooLarge(bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text, the error naming the file.
pub fn read_to_string(path: &Path, limit: u64) -> anyhow::Result<String> {
    let bytes = read(path, limit).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_and_never_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "12345").unwrap();
        assert_eq!(read(&file, 5).unwrap(), b"12345");
        let refused = |path: &Path, limit| read(path, limit).unwrap_err().to_string();
        assert_eq!(refused(&file, 4), "the file is 5 bytes, more than the 4 it may be");
        assert!(refused(Path::new("/dev/zero"), 1 << 20).contains("not a regular file"));
        assert!(refused(dir.path(), 10).contains("not a regular file"));
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(refused(&link, 1 << 20).contains("not a regular file"));
    }
}
