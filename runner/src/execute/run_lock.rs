//! One `petnas run` per run folder, also across the nodes of a cluster. The `.lock` file's
//! flock keeps out a second petnas on this machine (and on NFS, whose client forwards it to
//! the server). Where a shared filesystem keeps flocks per node, `.owner.json` does it: the
//! holder's host, pid and a heartbeat it renews; a fresh heartbeat from another host refuses
//! the run, a stale one (a petnas that died with its node) does not.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// A heartbeat older than this is a petnas that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(90);

pub struct RunLock {
    _file: std::fs::File,
    owner: PathBuf,
    stop: Arc<AtomicBool>,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer outlives the call and its length is passed.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

fn write_owner(path: &Path, host: &str) -> Result<()> {
    crate::execute::store::write_json_atomic(
        path,
        &json!({"host": host, "pid": std::process::id(), "heartbeat_unix": now_unix()}),
    )
}

/// Takes the run folder `dir` for this process until the lock is dropped.
pub fn acquire(dir: &Path) -> Result<RunLock> {
    let lock_path = dir.join(".lock");
    let file = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if file.try_lock().is_err() {
        bail!("another petnas run is using {}; wait for it to finish", dir.display());
    }
    let owner = dir.join(".owner.json");
    let host = hostname();
    if let Some(held) =
        std::fs::read(&owner).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        let other_host = held["host"].as_str().unwrap_or("");
        let age = now_unix() - held["heartbeat_unix"].as_f64().unwrap_or(0.0);
        if other_host != host && age < STALE_AFTER.as_secs_f64() {
            bail!(
                "petnas on {other_host} (pid {}) is using {} (its heartbeat is {age:.0}s old); wait for it to finish, or, if that petnas is gone, remove {} or wait {}s",
                held["pid"],
                dir.display(),
                owner.display(),
                STALE_AFTER.as_secs()
            );
        }
    }
    write_owner(&owner, &host)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (beat_path, beat_stop) = (owner.clone(), stop.clone());
    std::thread::spawn(move || {
        let tick = Duration::from_millis(500);
        let mut waited = Duration::ZERO;
        while !beat_stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            waited += tick;
            if waited >= HEARTBEAT_EVERY && !beat_stop.load(Ordering::Relaxed) {
                waited = Duration::ZERO;
                if let Err(e) = write_owner(&beat_path, &host) {
                    tracing::warn!("cannot renew the run folder's heartbeat: {e:#}");
                }
            }
        }
    });
    Ok(RunLock { _file: file, owner, stop })
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        std::fs::remove_file(&self.owner).ok();
    }
}
