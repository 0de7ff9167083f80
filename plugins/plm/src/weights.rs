//! The weights of a checkpoint folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped and read one tensor at a time (a sharded
//! model is never held twice). Pickle checkpoints are refused: loading one runs code.
//!
//! A [`Vb`] is a view of the weights under a prefix (`encoder.layer.3`), as model files ask
//! for them module by module. In header mode ([`Weights::headers`]) the same requests check
//! names, shapes and dtypes against the files' headers without reading any data: what
//! `petnas validate` runs.
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use petnas_sdk::model::WeightsDtype;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// The files that hold the weights.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(SINGLE).exists() {
        return Ok(vec![dir.join(SINGLE)]);
    }
    let index = dir.join(INDEX);
    if index.exists() {
        let text = read_regular(&index, 64 << 20)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = value["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no `weight_map`", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .map(|f| match f.as_str() {
                Some(name) if Path::new(name).file_name() == Some(std::ffi::OsStr::new(name)) => {
                    Ok(dir.join(name))
                }
                Some(name) => bail!("{}: shard `{name}` is not a file name in the folder", index.display()),
                None => bail!("{}: shard names must be strings", index.display()),
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let pickles: Vec<String> =
        ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "tf_model.h5"]
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string())
            .collect();
    if !pickles.is_empty() {
        bail!(
            "{} holds only {}: petnas loads safetensors, never pickle checkpoints (unpickling can run arbitrary code). \
             Convert it once with Python: python -c \"from transformers import AutoModel; \
             AutoModel.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\"",
            dir.display(),
            pickles.join(", "),
            d = dir.display()
        );
    }
    bail!("{} has no {SINGLE} (nor {INDEX})", dir.display())
}

/// A regular file's text, refusing FIFOs, devices and files over `limit` bytes (a
/// `/dev/zero` named as a config would never end).
pub fn read_regular(path: &Path, limit: u64) -> Result<String> {
    check_regular(path)?;
    let size = std::fs::metadata(path)?.len();
    if size > limit {
        bail!("{} is {size} bytes; at most {limit} are read", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// An error unless `path` is a regular file (links followed).
pub fn check_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file (a FIFO, device or folder cannot hold a checkpoint)", path.display());
    }
    Ok(())
}

/// One tensor of a file, as its header describes it.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    /// Where its bytes are in the file.
    bytes: std::ops::Range<usize>,
}

/// The checkpoint's tensors by name (prefixes stripped), each read when a model asks for it.
pub struct Weights {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    entries: BTreeMap<String, Entry>,
    /// Names a model took.
    taken: RefCell<BTreeSet<String>>,
    /// Header mode: check requests, read nothing.
    headers_only: bool,
    dir: PathBuf,
    /// The dtype floating-point weights are handed out in.
    kind: Kind,
    device: Device,
}

/// The kind most of the checkpoint's floating-point values are stored in (fp32 for none).
fn stored_kind(entries: &BTreeMap<String, Entry>) -> Kind {
    let mut elements: BTreeMap<&str, (Kind, i64)> = BTreeMap::new();
    for entry in entries.values() {
        if let Some(kind) = kind_of(entry.dtype) {
            elements.entry(WeightsDtype::name_of(kind)).or_insert((kind, 0)).1 +=
                entry.shape.iter().product::<i64>();
        }
    }
    elements.into_values().max_by_key(|(_, n)| *n).map_or(Kind::Float, |(kind, _)| kind)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

impl Weights {
    /// The weights of `dir` for reading, handed out as `dtype` on `device`; `prefixes` are
    /// stripped from checkpoint names (`bert.embeddings…` is `embeddings…`).
    pub fn read(dir: &Path, prefixes: &[&str], dtype: WeightsDtype, device: Device) -> Result<Weights> {
        Weights::open(dir, prefixes, dtype, device, false)
    }

    /// The same, for checking only: no tensor is read.
    pub fn headers(dir: &Path, prefixes: &[&str], dtype: WeightsDtype) -> Result<Weights> {
        Weights::open(dir, prefixes, dtype, Device::Cpu, true)
    }

    fn open(
        dir: &Path,
        prefixes: &[&str],
        dtype: WeightsDtype,
        device: Device,
        headers_only: bool,
    ) -> Result<Weights> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in weight_files(dir)?.into_iter().enumerate() {
            check_regular(&path)?;
            let file =
                std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the map is read only; a checkpoint rewritten while petnas reads it
            // gives wrong values, as with any reader, and the header check below still holds.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            // Checks the header and that every tensor's bytes lie inside the file.
            SafeTensors::deserialize(&map)
                .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
            let (header, metadata) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
            let data_start = 8 + header;
            for (name, info) in metadata.tensors() {
                let name =
                    prefixes.iter().find_map(|p| name.strip_prefix(p)).map(str::to_string).unwrap_or(name);
                let shape = info.shape.iter().map(|&d| d as i64).collect();
                let (start, end) = info.data_offsets;
                let bytes = data_start + start..data_start + end;
                entries.insert(name, Entry { file: i, dtype: info.dtype, shape, bytes });
            }
            files.push((path, map));
        }
        let kind = dtype.kind().unwrap_or_else(|| stored_kind(&entries));
        Ok(Weights {
            files,
            entries,
            taken: RefCell::new(BTreeSet::new()),
            headers_only,
            dir: dir.to_path_buf(),
            kind,
            device,
        })
    }

    /// What floating-point weights are handed out in, as [`WeightsDtype`] names it.
    pub fn dtype(&self) -> String {
        WeightsDtype::name_of(self.kind).to_string()
    }

    /// A view under `prefix`.
    pub fn root(&self) -> Vb<'_> {
        Vb { weights: self, prefix: String::new() }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn take(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            bail!("{} has no tensor `{name}` (needed by config.json)", self.describe_files());
        };
        let file = &self.files[entry.file].0;
        if entry.shape != shape {
            bail!(
                "tensor `{name}` in {} has shape {:?}, but config.json implies {:?}",
                file.display(),
                entry.shape,
                shape
            );
        }
        let Some(stored) = kind_of(entry.dtype) else {
            bail!(
                "tensor `{name}` in {} is stored as {:?}; weights are floating point (F32, F16, BF16)",
                file.display(),
                entry.dtype
            );
        };
        self.taken.borrow_mut().insert(name.to_string());
        if self.headers_only {
            // The shape, with no storage behind it: sites and counts read right, nothing is
            // allocated.
            return Ok(Tensor::zeros([1], (self.kind, Device::Cpu)).expand(shape, false));
        }
        let data = &self.files[entry.file].1[entry.bytes.clone()];
        let tensor = Tensor::f_from_data_size(data, shape, stored)
            .with_context(|| format!("cannot read tensor `{name}` of {}", file.display()))?;
        Ok(tensor.f_to_kind(self.kind)?.f_to_device(self.device)?.set_requires_grad(false))
    }

    /// Tensors no module took whose names start with `prefix`: a config that lists fewer
    /// layers than the checkpoint has would otherwise load a shortened model.
    pub fn check_all_taken(&self, prefix: &str, what: &str) -> Result<()> {
        let taken = self.taken.borrow();
        let left: Vec<&String> =
            self.entries.keys().filter(|n| n.starts_with(prefix) && !taken.contains(*n)).collect();
        if let Some(first) = left.first() {
            bail!(
                "{} holds {} tensor(s) under `{prefix}` that config.json does not account for (e.g. `{first}`): {what}",
                self.describe_files(),
                left.len()
            );
        }
        Ok(())
    }

    /// Tensors nobody took (task heads, buffers), for a debug line.
    pub fn leftover(&self) -> Vec<String> {
        let taken = self.taken.borrow();
        self.entries.keys().filter(|n| !taken.contains(*n)).cloned().collect()
    }

    fn describe_files(&self) -> String {
        match self.files.len() {
            0 => self.dir.join(SINGLE).display().to_string(),
            1 => self.files[0].0.display().to_string(),
            _ => format!("the shards of {}", self.dir.join(INDEX).display()),
        }
    }
}

/// The weights under a prefix, as one module of a model file asks for them.
#[derive(Clone)]
pub struct Vb<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> Vb<'a> {
    /// The view one level down: `vb.pp("attention").pp("self")`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        let prefix =
            if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vb { weights: self.weights, prefix }
    }

    /// The full name of `name` here.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The prefix itself (a module's site name).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tensor `name` of this shape, frozen.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.weights.take(&self.name(name), shape)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.name(name))
    }

    /// The tensor where the checkpoint has it.
    pub fn get_optional(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }
}
