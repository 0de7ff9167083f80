//! Bakes the build fingerprint into the sdk: a plugin and the host must agree on it, because
//! they exchange Rust types (trait objects, tensors, strings) across the library boundary.
//! It covers the sdk's own source, so that a plugin built against a changed contract is
//! refused even where nobody remembered to bump the contract version.
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// SHA-256 over the sdk's source files, by path, in path order.
fn source_hash(dir: &Path) -> String {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("the sdk's src folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        hash.update(std::fs::read(&file).expect("an sdk source file"));
    }
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=PETNAS_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=PETNAS_BUILD_PROFILE={profile}");
    println!("cargo:rustc-env=PETNAS_SDK_SOURCE={}", source_hash(Path::new("src")));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
}
