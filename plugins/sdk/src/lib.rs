//! The contract between the `petnas` runner and its plugins.
//!
//! A plugin is a `cdylib` that calls [`declare_plugin!`] once. The runner loads it at run
//! time, checks [`CONTRACT_VERSION`] and [`FINGERPRINT`] before touching anything else, then
//! lets it register its stage kinds ([`Stage`]) and PET types ([`model::PetType`]).
//! Host and plugins exchange Rust values (trait objects, `tch::Tensor`s, strings), which is
//! sound only when both were built by the same compiler against the same sdk and libtorch:
//! that is what the fingerprint pins.

// The derive of `Options` names `::petnas_sdk`, here too.
extern crate self as petnas_sdk;

pub mod artifact;
pub mod dropout;
pub mod init;
pub mod model;
pub mod options;
pub mod params;
pub mod pets;
pub mod plugin;
pub mod services;
pub mod stage;
pub mod tool;

pub use artifact::{Artifact, Inputs};
pub use options::{OptType, OptionSchema, OptionSpec, Options};
pub use plugin::{PluginDeclaration, Registrar};
pub use serde_json;
pub use services::Services;
pub use stage::{caught, Progress, Stage, StageCtx, TypedStage, PLAN_KEY};
pub use tool::{Tool, ToolOutput};

/// Bumped whenever [`PluginDeclaration`] or any type crossing the plugin boundary changes.
pub const CONTRACT_VERSION: u32 = 8;

macro_rules! fingerprint_literal {
    () => {
        concat!(
            "petnas-sdk ",
            env!("CARGO_PKG_VERSION"),
            "; contract 8; sdk source ",
            env!("PETNAS_SDK_SOURCE"),
            "; ",
            env!("PETNAS_RUSTC_VERSION"),
            "; tch 0.24.0; libtorch 2.11.0; profile ",
            env!("PETNAS_BUILD_PROFILE")
        )
    };
}

/// What host and plugin must agree on byte for byte before any Rust value crosses between
/// them. (`contract 8` repeats [`CONTRACT_VERSION`]: `concat!` takes literals only.)
pub const FINGERPRINT: &str = fingerprint_literal!();

/// [`FINGERPRINT`]'s bytes in a plain array, which every plugin exports as
/// [`plugin::STAMP_SYMBOL`]: it holds no pointer, so the host reads it from the file and
/// compares it before it loads the file (loading runs the file's initialisers).
pub const STAMP: [u8; FINGERPRINT.len()] = {
    let text = FINGERPRINT.as_bytes();
    let mut stamp = [0u8; FINGERPRINT.len()];
    let mut i = 0;
    while i < text.len() {
        stamp[i] = text[i];
        i += 1;
    }
    stamp
};

/// [`FINGERPRINT`] as a C string, the form it takes inside a [`PluginDeclaration`].
pub const FINGERPRINT_C: &std::ffi::CStr =
    match std::ffi::CStr::from_bytes_with_nul(concat!(fingerprint_literal!(), "\0").as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("fingerprint contains a NUL byte"),
    };
