//! How a plugin declares itself and registers what it provides.
use std::ffi::c_char;

use crate::model::{BackboneLoader, PetType};
use crate::stage::{CatchPanics, Stage};
use crate::tool::Tool;

/// The symbol every plugin exports (via [`crate::declare_plugin!`]).
pub const ENTRY_SYMBOL: &[u8] = b"petnas_plugin_declaration\0";

/// The exported array of [`crate::STAMP`] the host reads from the file before loading it.
pub const STAMP_SYMBOL: &str = "PETNAS_PLUGIN_STAMP";

/// Returned by a plugin's entry symbol. `repr(C)` with plain C fields first, so the host can
/// read the contract version and fingerprint of a plugin built by anything; the Rust function
/// pointers are only called once both match.
#[repr(C)]
pub struct PluginDeclaration {
    pub contract_version: u32,
    /// NUL-terminated [`crate::FINGERPRINT`] of the sdk the plugin was built with.
    pub fingerprint: *const c_char,
    /// NUL-terminated crate name, e.g. `petnas-plugin-lora`.
    pub name: *const c_char,
    /// NUL-terminated crate version.
    pub version: *const c_char,
    /// Routes the plugin's `tracing` events to the host's subscriber.
    pub install_dispatch: fn(&tracing::Dispatch),
    /// Adds the plugin's stage kinds and PET types.
    pub register: fn(&mut Registrar),
}

// The declaration is an immutable static; its pointers point at static strings.
unsafe impl Sync for PluginDeclaration {}

/// Declares the plugin: `petnas_sdk::declare_plugin!(register);` with
/// `fn register(r: &mut Registrar)`.
#[macro_export]
macro_rules! declare_plugin {
    ($register:path) => {
        #[no_mangle]
        pub static PETNAS_PLUGIN_STAMP: [u8; $crate::FINGERPRINT.len()] = $crate::STAMP;

        #[no_mangle]
        pub extern "C" fn petnas_plugin_declaration() -> *const $crate::PluginDeclaration {
            static DECLARATION: $crate::PluginDeclaration = $crate::PluginDeclaration {
                contract_version: $crate::CONTRACT_VERSION,
                fingerprint: $crate::FINGERPRINT_C.as_ptr(),
                name: concat!(env!("CARGO_PKG_NAME"), "\0").as_ptr() as *const ::std::ffi::c_char,
                version: concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const ::std::ffi::c_char,
                install_dispatch: $crate::plugin::install_dispatch,
                register: $register,
            };
            &DECLARATION
        }
    };
}

/// Runs inside the plugin, on the plugin's own copy of `tracing`'s statics: without the
/// interest-cache rebuild the plugin's max level stays OFF and its events vanish.
pub fn install_dispatch(dispatch: &tracing::Dispatch) {
    // A second call (the host loads each plugin file once) would only fail harmlessly.
    let _ = tracing::dispatcher::set_global_default(dispatch.clone());
    tracing::callsite::rebuild_interest_cache();
    // Every call into a plugin catches its panics and turns them into errors that carry the
    // message (`crate::caught`): the default hook's print to stderr would only repeat it,
    // with libtorch's C++ stack.
    std::panic::set_hook(Box::new(|info| tracing::debug!("caught inside the plugin: {info}")));
}

/// What one plugin registered.
#[derive(Default)]
pub struct Registered {
    pub stages: Vec<Box<dyn Stage>>,
    pub pet_types: Vec<Box<dyn PetType>>,
    pub backbone_loaders: Vec<Box<dyn BackboneLoader>>,
    pub tools: Vec<Box<dyn Tool>>,
}

/// Collects what one plugin provides.
#[derive(Default)]
pub struct Registrar {
    registered: Registered,
}

impl Registrar {
    /// Adds a stage kind. Its panics are caught on the plugin's side of the boundary (a panic
    /// cannot unwind from one Rust runtime into another) and become stage errors.
    pub fn stage<S: Stage + 'static>(&mut self, stage: S) {
        self.registered.stages.push(Box::new(CatchPanics(stage)));
    }

    pub fn pet_type<P: PetType + 'static>(&mut self, pet_type: P) {
        self.registered.pet_types.push(Box::new(pet_type));
    }

    pub fn backbone_loader<L: BackboneLoader + 'static>(&mut self, loader: L) {
        self.registered.backbone_loaders.push(Box::new(loader));
    }

    /// Adds a `petnas` subcommand; its panics are caught like a stage's.
    pub fn tool<T: Tool + 'static>(&mut self, tool: T) {
        self.registered.tools.push(Box::new(CatchPanics(tool)));
    }

    pub fn into_parts(self) -> Registered {
        self.registered
    }
}
