//! The run folder: `runs/<pipeline>/<cell>/<stage>/` with the stage's outputs, log and
//! content key. A stage is written into a temporary folder that is renamed into place when
//! it is complete, so a crash at any moment leaves either the finished stage or nothing.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use petnas_sdk::Artifact;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::plugins::hex;

pub use petnas_sdk::stage::{STAGE_LOG as LOG, STAGE_RECORD};

/// Everything that determines a stage's result; its hash is the stage's content key.
#[derive(Serialize)]
pub struct KeyParts<'a> {
    pub kind: &'a str,
    pub options: &'a Json,
    /// What the stage reads from outside (files named by its options), as it reports it.
    pub external: &'a str,
    pub inputs: &'a BTreeMap<String, String>,
    pub plugin_sha256: &'a str,
    /// The plugins whose PET types and backbone loaders the stage may run.
    pub services_sha256: &'a str,
    pub seed: u64,
    pub dtype: &'a str,
    pub device: &'a str,
}

impl KeyParts<'_> {
    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("key parts serialise");
        hex(&Sha256::digest(canonical))
    }

    /// The key of each part of the stage's output (`Stage::output_parts`): this key with the
    /// options and external inputs replaced by what the part is made of.
    pub fn part_keys(&self, parts: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        parts
            .iter()
            .map(|(name, made_of)| {
                (name.clone(), KeyParts { options: &Json::Null, external: made_of, ..*self }.key())
            })
            .collect()
    }
}

/// What a stage's key takes of an input: the key of the parts it reads where it reads only
/// some of parts the input has, else the input's whole key.
pub fn input_key(whole: &str, parts: &BTreeMap<String, String>, read: Option<&[&str]>) -> String {
    let read: BTreeMap<&str, &str> = read
        .into_iter()
        .flatten()
        .filter_map(|name| parts.get(*name).map(|key| (*name, key.as_str())))
        .collect();
    match read.is_empty() {
        true => whole.to_string(),
        false => hex(&Sha256::digest(serde_json::to_vec(&read).expect("part keys serialise"))),
    }
}

/// `stage.json`: written last, so its presence marks a complete stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub kind: String,
    pub options: Json,
    pub inputs: BTreeMap<String, String>,
    pub plugin: String,
    pub plugin_version: String,
    pub device: String,
    pub seed: u64,
    pub started_unix: f64,
    pub seconds: f64,
    /// What the stage wrote outside the run folder (`--allow-write`): by path, the SHA-256 of
    /// what was there when it completed. Reuse checks it, so that a folder since deleted or
    /// overwritten by another run is written again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outside: BTreeMap<String, String>,
}

/// The SHA-256 of a file, or of a folder's files by relative path and content in path order;
/// `missing` where nothing is there.
pub fn tree_hash(path: &Path) -> String {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(root, &path, files),
                Ok(t) if t.is_file() => files.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf()),
                _ => {}
            }
        }
    }
    let mut hash = Sha256::new();
    let mut files = Vec::new();
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => walk(path, path, &mut files),
        Ok(m) if m.is_file() => files.push(PathBuf::new()),
        _ => return "missing".into(),
    }
    files.sort();
    for file in files {
        hash.update(file.to_string_lossy().as_bytes());
        hash.update([0]);
        match fs::File::open(path.join(&file)) {
            Ok(mut f) => {
                if std::io::copy(&mut f, &mut hash).is_err() {
                    return "unreadable".into();
                }
            }
            Err(_) => return "unreadable".into(),
        }
        hash.update([0]);
    }
    hex(&hash.finalize())
}

pub fn stage_dir(cell_dir: &Path, stage: &str) -> PathBuf {
    cell_dir.join(stage)
}

/// The content key a complete stage's record gives, if there is one.
pub fn recorded_key(dir: &Path) -> Option<String> {
    let text = crate::bounded::read_to_string(&dir.join(STAGE_RECORD), crate::bounded::RECORD_BYTES).ok()?;
    serde_json::from_str::<StageRecord>(&text).ok().map(|r| r.key)
}

/// The record of a complete stage whose key is `key`, if there is one and what it wrote
/// outside the run folder is still there as it wrote it.
pub fn completed(dir: &Path, key: &str) -> Option<StageRecord> {
    let text = crate::bounded::read_to_string(&dir.join(STAGE_RECORD), crate::bounded::RECORD_BYTES).ok()?;
    let record: StageRecord = serde_json::from_str(&text).ok()?;
    if record.key != key {
        return None;
    }
    for (path, hash) in &record.outside {
        let now = tree_hash(Path::new(path));
        if &now != hash {
            let what = if now == "missing" { "is gone" } else { "has changed since" };
            tracing::warn!(stage = %dir.display(), "its output outside the run folder, {path}, {what}: computed again");
            return None;
        }
    }
    Some(record)
}

/// The complete stages in the cell folders of `pipeline_dir` that this run does not compute
/// (left there by another `--only` selection, or by a matrix since changed), by stage id and
/// content key: where a stage of this run can be copied from instead of recomputed.
pub fn completed_in_other_cells(
    pipeline_dir: &Path,
    run_cells: &BTreeSet<&str>,
    stage_ids: &[&str],
) -> BTreeMap<(String, String), PathBuf> {
    let mut found = BTreeMap::new();
    let Ok(entries) = fs::read_dir(pipeline_dir) else { return found };
    for entry in entries.flatten() {
        let cell = entry.file_name();
        let Some(cell) = cell.to_str() else { continue };
        if cell.starts_with('.') || run_cells.contains(cell) || !entry.path().is_dir() {
            continue;
        }
        for &stage in stage_ids {
            let dir = stage_dir(&entry.path(), stage);
            let record =
                crate::bounded::read_to_string(&dir.join(STAGE_RECORD), crate::bounded::RECORD_BYTES)
                    .ok()
                    .and_then(|text| serde_json::from_str::<StageRecord>(&text).ok());
            if let Some(record) = record {
                found.entry((stage.to_string(), record.key)).or_insert(dir);
            }
        }
    }
    found
}

/// Where a stage with this content key keeps its checkpoints across interrupted runs.
pub fn checkpoint_dir(cell_dir: &Path, stage: &str, key: &str) -> PathBuf {
    cell_dir.join(".checkpoints").join(format!("{stage}-{}", &key[..key.len().min(16)]))
}

/// A fresh temporary folder beside the stage's final one.
pub fn temp_dir(cell_dir: &Path, stage: &str) -> Result<PathBuf> {
    fs::create_dir_all(cell_dir).with_context(|| format!("cannot create {}", cell_dir.display()))?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Inside a Slurm job the job id names it: another petnas leaves it alone while the job runs.
    let owner = match std::env::var("SLURM_JOB_ID") {
        Ok(id) if id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty() => format!("slurm{id}"),
        _ => std::process::id().to_string(),
    };
    let dir = cell_dir.join(format!(".tmp-{stage}-{owner}-{nanos}"));
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Complete stages a stage folder held before another version replaced it, kept per stage:
/// `<cell>/.versions/<stage>/<content key>/`, at most this many, the least recently used
/// going first. Switching a pipeline back to an earlier variant reuses them.
const VERSIONS: &str = ".versions";
pub const KEPT_VERSIONS: usize = 3;

fn versions_dir(dir: &Path) -> Option<PathBuf> {
    let stage = dir.file_name()?;
    Some(dir.parent()?.join(VERSIONS).join(stage))
}

/// Whether `dir` is a kept version of a stage, not a stage's folder.
pub fn is_kept_version(dir: &Path) -> bool {
    dir.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|name| name == VERSIONS)
}

/// The kept version of the stage folder `dir` with this content key, if it is complete.
pub fn kept_version(dir: &Path, key: &str) -> Option<PathBuf> {
    let version = versions_dir(dir)?.join(key);
    completed(&version, key).map(|_| {
        // Its use makes it the most recent.
        fs::File::open(&version).and_then(|f| f.set_modified(std::time::SystemTime::now())).ok();
        version
    })
}

/// Moves a complete stage at `dir` into its stage's kept versions, before a stage with
/// another key takes its place, and drops the least recently used beyond [`KEPT_VERSIONS`].
fn keep_version(dir: &Path, new_key: &str) -> Result<()> {
    let (Some(key), Some(versions)) = (recorded_key(dir), versions_dir(dir)) else { return Ok(()) };
    if key == new_key {
        return Ok(());
    }
    fs::create_dir_all(&versions).with_context(|| format!("cannot create {}", versions.display()))?;
    let version = versions.join(&key);
    if version.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    } else {
        fs::rename(dir, &version).with_context(|| format!("cannot keep {} as a version", dir.display()))?;
        fs::File::open(&version).and_then(|f| f.set_modified(std::time::SystemTime::now())).ok();
    }
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&versions)?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    kept.sort();
    for (_, old) in kept.iter().rev().skip(KEPT_VERSIONS) {
        fs::remove_dir_all(old).ok();
    }
    Ok(())
}

/// Moves the complete folder `temp`, a stage with content key `key`, into place at `dir`,
/// keeping what was there as a version.
fn put_in_place(temp: &Path, dir: &Path, key: &str) -> Result<()> {
    keep_version(dir, key)?;
    let aside =
        temp.with_file_name(format!(".old-{}", temp.file_name().and_then(|n| n.to_str()).unwrap_or("stage")));
    petnas_sdk::artifact::replace_dir(temp, dir, &aside)?;
    sync_dir(dir.parent().unwrap_or(dir));
    Ok(())
}

/// Writes the artifact and the record into `temp`, then moves `temp` to `dir` atomically.
pub fn commit(temp: &Path, dir: &Path, artifact: &Artifact, record: &StageRecord) -> Result<()> {
    artifact.save(temp)?;
    write_json_atomic(&temp.join(STAGE_RECORD), &serde_json::to_value(record)?)?;
    put_in_place(temp, dir, &record.key)
}

/// Puts a copy of the complete stage folder `from`, whose content key is `key` (files
/// hard-linked where the filesystem allows: stage outputs are never changed in place) at
/// `dir`, atomically.
pub fn copy_completed(from: &Path, key: &str, dir: &Path, cell_dir: &Path, stage: &str) -> Result<()> {
    let temp = temp_dir(cell_dir, stage)?;
    let copied = link_tree(from, &temp);
    if let Err(e) = copied {
        fs::remove_dir_all(&temp).ok();
        return Err(e.context(format!("cannot copy {} to {}", from.display(), dir.display())));
    }
    put_in_place(&temp, dir, key)
}

fn link_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if fs::hard_link(entry.path(), &target).is_err() {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes JSON to a temporary file, syncs it, and renames it over `path`.
pub fn write_json_atomic(path: &Path, value: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomic(path, text.as_bytes())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes).map_err(anyhow::Error::from))
}

/// Writes `path` whole or not at all, `write` streaming into a temporary file beside it (so
/// that a large record is never held in memory whole).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<()> {
    use std::io::Write;
    let temp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = fs::File::create(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))
        .and_then(|file| {
            let mut buffered = std::io::BufWriter::new(file);
            write(&mut buffered)
                .and_then(|_| buffered.flush().map_err(anyhow::Error::from))
                .and_then(|_| buffered.get_ref().sync_all().map_err(anyhow::Error::from))
                .with_context(|| format!("cannot write {}", temp.display()))
        })
        .and_then(|_| fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display())));
    if written.is_err() {
        fs::remove_file(&temp).ok();
    }
    written
}

/// Whether `error` is, somewhere in its chain, a full disk (ENOSPC or EDQUOT), also where a
/// library kept only the message.
pub fn is_disk_full(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
            || cause.to_string().contains("No space left on device")
            || cause.to_string().contains("Disk quota exceeded")
    })
}

/// `error`, where it is a full disk, with the disk named: the file system holding `dir`, and
/// what is left on it.
pub fn name_full_disk(error: anyhow::Error, dir: &Path) -> anyhow::Error {
    if !is_disk_full(&error) {
        return error;
    }
    let free = free_bytes(dir).map_or(String::new(), |b| format!(" (now {} free)", human_bytes(b)));
    error.context(format!(
        "the disk holding {} ran out of space{free}: free space there and run again; finished stages are kept",
        dir.display()
    ))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid statvfs to fill in.
    (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0)
        .then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        d.sync_all().ok();
    }
}

/// Removes temporary folders left by runs that were killed: all but those `in_use` (a
/// stage's job still running elsewhere) names.
pub fn clean_leftovers(pipeline_dir: &Path, in_use: &dyn Fn(&str) -> bool) {
    let Ok(cells) = fs::read_dir(pipeline_dir) else { return };
    for cell in cells.flatten().filter(|e| e.path().is_dir()) {
        let Ok(entries) = fs::read_dir(cell.path()) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with(".tmp-") || name.starts_with(".old-")) && !in_use(&name) {
                tracing::debug!(path = %entry.path().display(), "removing leftover of an interrupted run");
                fs::remove_dir_all(entry.path()).ok();
            }
        }
    }
}
