//! Bakes the build fingerprint into the sdk: a plugin and the host must agree on it, because
//! they exchange Rust types (trait objects, tensors, strings) across the library boundary.
use std::process::Command;

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
    println!("cargo:rerun-if-changed=build.rs");
}
