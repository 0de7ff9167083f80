//! Helpers for the end-to-end tests: the release `petnas` binary and plugin files cargo
//! built beside it, scratch folders, and runs of the binary with their output.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// target/<profile>/, where cargo puts `petnas` and the plugin libraries.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

pub fn petnas_bin() -> PathBuf {
    let bin = build_dir().join("petnas");
    assert!(bin.exists(), "{} is missing: build the workspace first (scripts/test.sh does)", bin.display());
    bin
}

pub fn plugin_file(name: &str) -> PathBuf {
    build_dir().join(format!("libpetnas_{name}.so"))
}

/// The test-only demo plugins of tests/plugins/, installed under plugin file names into a
/// folder of their own: cargo builds them as `libpetnastest_*.so`, which petnas does not
/// load from beside the binary, so that users never see them.
pub fn demo_plugin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = build_dir().join("test-plugins");
        std::fs::create_dir_all(&dir).expect("create the test plugin folder");
        let built_plugins: Vec<(String, PathBuf)> = std::fs::read_dir(build_dir())
            .expect("the build folder")
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let name = file.strip_prefix("libpetnastest_")?.strip_suffix(".so")?.to_string();
                Some((name, e.path()))
            })
            .collect();
        assert!(
            built_plugins.len() >= 2,
            "the test plugins of tests/plugins/ are missing: build the workspace first"
        );
        for (name, built) in built_plugins {
            // Another test process may be installing it too: copy, then rename into place.
            let temp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::copy(&built, &temp).expect("copy a demo plugin");
            std::fs::rename(&temp, dir.join(format!("libpetnas_{name}.so"))).expect("install a demo plugin");
        }
        dir
    })
    .clone()
}

pub fn demo_plugin(name: &str) -> PathBuf {
    demo_plugin_dir().join(format!("libpetnas_{name}.so"))
}

/// A scratch folder with pipelines written into it and runs under `runs/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temporary folder") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write scratch file");
        path
    }

    /// `petnas ARGS` in the scratch folder, plain log output, the demo plugins as the only
    /// plugin path from outside, and no LD_LIBRARY_PATH: the binary finds libtorch by itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(petnas_bin());
        cmd.args(args)
            .current_dir(self.path())
            .env("CI", "1")
            .env("PETNAS_PLUGIN_PATH", demo_plugin_dir())
            .env("RUST_LOG", "info");
        cmd
    }

    pub fn petnas(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run petnas"))
    }

    /// `petnas validate p.yaml` refuses the pipeline (exit 2) with an error that says each of
    /// `said` (its place, `p.yaml:7:`, among them).
    pub fn assert_refused(&self, said: &[&str]) {
        let check = self.petnas(&["validate", "p.yaml"]);
        assert_eq!(check.code, 2, "{}", check.stderr);
        for what in said {
            assert!(check.stderr.contains(what), "`{what}` not in: {}", check.stderr);
        }
    }

    /// The run folder of a pipeline's stage in a cell.
    pub fn stage_dir(&self, pipeline: &str, cell: &str, stage: &str) -> PathBuf {
        self.path().join("runs").join(pipeline).join(cell).join(stage)
    }

    pub fn read_json(&self, path: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    }
}

/// What a stage computed, byte for byte: its outputs, predictions and metrics (not its
/// record or log, which carry times).
pub fn stage_outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outputs.") || n.ends_with(".tsv") || n == "metrics.json")
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    files.sort();
    files
}

/// The repository's root folder: where this crate was built, or `PETNAS_WORKSPACE` (a copy
/// of the checkout on a GPU machine, where the tests run as built here).
pub fn workspace() -> PathBuf {
    let root = std::env::var_os("PETNAS_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    root.canonicalize().expect("workspace root")
}

/// A small random RoBERTa checkpoint saved by transformers (fast to train on).
/// The default PLM, all-MiniLM-L6-v2, where scripts/setup.sh put it.
pub fn default_model() -> String {
    workspace().join("models/all-MiniLM-L6-v2").display().to_string()
}

pub fn tiny_model() -> String {
    workspace().join("tests/fixtures/plm/tiny-roberta").display().to_string()
}

pub fn glue_fixtures() -> String {
    workspace().join("tests/fixtures/glue").display().to_string()
}

/// The plugins of this build, loaded into the test process (for inspecting artifacts).
pub fn registry() -> &'static petnas::plugins::Registry {
    static REGISTRY: std::sync::OnceLock<petnas::plugins::Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| petnas::plugins::Registry::load(&[build_dir()]))
}

/// What `pet.export` saved to check its exports against: a few dev examples and the logits
/// petnas gave them.
pub struct ExportCheck {
    pub batch: petnas_sdk::model::Batch,
    pub logits: tch::Tensor,
}

pub fn export_check(dir: &Path) -> ExportCheck {
    use tch::{Kind, Tensor};
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("check.json")).expect("check.json")).unwrap();
    let matrix = |key: &str, kind: Kind| {
        let rows: Vec<Vec<f64>> = serde_json::from_value(check[key].clone()).unwrap();
        let (n, m) = (rows.len() as i64, rows[0].len() as i64);
        Tensor::from_slice(&rows.concat()).view([n, m]).to_kind(kind)
    };
    ExportCheck {
        batch: petnas_sdk::model::Batch {
            input_ids: matrix("input_ids", Kind::Int64),
            token_type_ids: matrix("token_type_ids", Kind::Int64),
            attention_mask: matrix("attention_mask", Kind::Int64),
            labels: None,
            rows: vec![],
        },
        logits: matrix("logits", Kind::Float),
    }
}
