//! The plugin host: finds plugin files on the search path, checks each one's contract
//! version and build fingerprint before using it, and collects what they register.
pub mod list;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use petnas_sdk::model::{BackboneLoader, PetType};
use petnas_sdk::plugin::{Registered, ENTRY_SYMBOL, STAMP_SYMBOL};
use petnas_sdk::{PluginDeclaration, Registrar, Services, Stage, Tool, CONTRACT_VERSION, FINGERPRINT, STAMP};
use sha2::{Digest, Sha256};

pub const PLUGIN_PATH_ENV: &str = "PETNAS_PLUGIN_PATH";

/// A plugin file that was loaded and accepted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// sha256 of the file: part of every content key of its stages.
    pub sha256: String,
}

/// A plugin file that was found but not used, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Default)]
pub struct Registry {
    pub plugins: Vec<PluginInfo>,
    pub refused: Vec<Refusal>,
    /// Files skipped because an earlier folder on the search path has the same plugin.
    pub shadowed: Vec<(PathBuf, PathBuf)>,
    stages: BTreeMap<String, (Box<dyn Stage>, usize)>,
    pet_types: BTreeMap<String, (Box<dyn PetType>, usize)>,
    backbone_loaders: BTreeMap<String, (Box<dyn BackboneLoader>, usize)>,
    tools: BTreeMap<String, (Box<dyn Tool>, usize)>,
}

/// `--plugin-dir` folders, then `PETNAS_PLUGIN_PATH`, then the folder of the binary.
pub fn search_path(cli_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cli_dirs.to_vec();
    if let Some(env) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir);
    }
    dirs.into_iter().map(|d| std::path::absolute(&d).unwrap_or(d)).collect()
}

fn is_plugin_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libpetnas_") && n.ends_with(std::env::consts::DLL_SUFFIX))
}

impl Registry {
    /// Loads every plugin file on the search path; the first folder holding a plugin wins.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                tracing::debug!(dir = %dir.display(), "plugin folder not readable, skipped");
                continue;
            };
            warn_if_others_can_write(dir);
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_plugin_file(p)).collect();
            files.sort();
            for path in files {
                if let Err(reason) = registry.load_file(&path, &mut seen) {
                    tracing::warn!(plugin = %path.display(), "plugin refused: {reason:#}");
                    registry.refused.push(Refusal { path, reason: format!("{reason:#}") });
                }
            }
        }
        registry
    }

    fn load_file(&mut self, path: &Path, seen: &mut BTreeMap<String, PathBuf>) -> Result<()> {
        let bytes = std::fs::read(path).context("cannot be read")?;
        check_stamp(&bytes)?;
        // SAFETY: loading runs the library's initialisers; only files on the user's plugin
        // search path whose stamp says they were built with this petnas-sdk are loaded.
        let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .with_context(|| "cannot be loaded as a shared library")?;
        // SAFETY: the symbol's type is fixed by the contract (declare_plugin!).
        let entry = unsafe { library.get::<extern "C" fn() -> *const PluginDeclaration>(ENTRY_SYMBOL) }
            .with_context(|| "not a petnas plugin: it exports no `petnas_plugin_declaration`")?;
        let declaration = entry();
        anyhow::ensure!(!declaration.is_null(), "its declaration is null");
        // SAFETY: the first fields of the declaration are plain C data in every contract version.
        let declaration = unsafe { &*declaration };
        anyhow::ensure!(
            declaration.contract_version == CONTRACT_VERSION,
            "plugin contract version {} differs from this petnas's {CONTRACT_VERSION}; rebuild the plugin against this petnas",
            declaration.contract_version
        );
        // SAFETY: declarations of this contract hold NUL-terminated static strings.
        let (fingerprint, name, version) = unsafe {
            (
                CStr::from_ptr(declaration.fingerprint).to_string_lossy().into_owned(),
                CStr::from_ptr(declaration.name).to_string_lossy().into_owned(),
                CStr::from_ptr(declaration.version).to_string_lossy().into_owned(),
            )
        };
        anyhow::ensure!(
            fingerprint == FINGERPRINT,
            "build fingerprint mismatch: the plugin was built with `{fingerprint}`, this petnas with `{FINGERPRINT}`; rebuild the plugin with the same toolchain and petnas-sdk"
        );
        if let Some(first) = seen.get(&name) {
            tracing::debug!(plugin = %name, used = %first.display(), skipped = %path.display(), "plugin shadowed by an earlier folder");
            self.shadowed.push((path.to_path_buf(), first.clone()));
            return Ok(());
        }
        (declaration.install_dispatch)(&tracing::dispatcher::get_default(|d| d.clone()));
        let mut registrar = Registrar::default();
        (declaration.register)(&mut registrar);
        let Registered { stages, pet_types, backbone_loaders, tools } = registrar.into_parts();
        let taken = |what: &str, name: &str, map_owner: Option<usize>| match map_owner {
            Some(other) => Err(anyhow::anyhow!(
                "{what} `{name}` is already provided by {}",
                self.plugins[other].path.display()
            )),
            None => Ok(()),
        };
        for stage in &stages {
            taken("stage kind", stage.kind(), self.stages.get(stage.kind()).map(|e| e.1))?;
        }
        for pet in &pet_types {
            taken("PET type", pet.name(), self.pet_types.get(pet.name()).map(|e| e.1))?;
        }
        for loader in &backbone_loaders {
            taken("backbone loader", loader.name(), self.backbone_loaders.get(loader.name()).map(|e| e.1))?;
        }
        for tool in &tools {
            taken("command", tool.name(), self.tools.get(tool.name()).map(|e| e.1))?;
        }
        let index = self.plugins.len();
        let sha256 = hex(&Sha256::digest(&bytes));
        self.plugins.push(PluginInfo { name: name.clone(), version, path: path.to_path_buf(), sha256 });
        seen.insert(name, path.to_path_buf());
        for stage in stages {
            self.stages.insert(stage.kind().to_string(), (stage, index));
        }
        for pet in pet_types {
            self.pet_types.insert(pet.name().to_string(), (pet, index));
        }
        for loader in backbone_loaders {
            self.backbone_loaders.insert(loader.name().to_string(), (loader, index));
        }
        for tool in tools {
            self.tools.insert(tool.name().to_string(), (tool, index));
        }
        // Stage objects and tensors made by the plugin live as long as the process.
        std::mem::forget(library);
        Ok(())
    }

    pub fn stage(&self, kind: &str) -> Option<(&dyn Stage, &PluginInfo)> {
        self.stages.get(kind).map(|(s, i)| (s.as_ref(), &self.plugins[*i]))
    }

    pub fn stage_kinds(&self) -> impl Iterator<Item = &str> {
        self.stages.keys().map(String::as_str)
    }

    pub fn pet_types(&self) -> impl Iterator<Item = (&dyn PetType, &PluginInfo)> {
        self.pet_types.values().map(|(p, i)| (p.as_ref(), &self.plugins[*i]))
    }

    pub fn stages(&self) -> impl Iterator<Item = (&dyn Stage, &PluginInfo)> {
        self.stages.values().map(|(s, i)| (s.as_ref(), &self.plugins[*i]))
    }

    /// One hash over every plugin that serves other plugins' stages (PET types, backbone
    /// loaders): a stage runs their code through the model it is handed, so a changed PET
    /// type must change the content key of every stage, not only of its own plugin's.
    pub fn services_sha256(&self) -> String {
        self.services_sha256_of(None)
    }

    /// The SHA-256 of the plugins serving these services (`pet:<type>`, `loader:<name>`), or
    /// every PET type and backbone loader where they are not known: what a stage's content
    /// key holds of the plugins its model is made of.
    pub fn services_sha256_of(&self, services: Option<&std::collections::BTreeSet<String>>) -> String {
        let wanted = |service: String| services.is_none_or(|s| s.contains(&service));
        let mut serving: Vec<(&str, &str)> = self
            .pet_types
            .iter()
            .filter(|(name, _)| wanted(format!("pet:{name}")))
            .map(|(_, (_, i))| *i)
            .chain(
                self.backbone_loaders
                    .iter()
                    .filter(|(name, _)| wanted(format!("loader:{name}")))
                    .map(|(_, (_, i))| *i),
            )
            .map(|i| (self.plugins[i].name.as_str(), self.plugins[i].sha256.as_str()))
            .collect();
        serving.sort();
        serving.dedup();
        let text: Vec<String> = serving.iter().map(|(n, h)| format!("{n}:{h}")).collect();
        hex(&Sha256::digest(text.join("\n")))
    }

    pub fn tool(&self, name: &str) -> Option<&dyn Tool> {
        self.tools.get(name).map(|(t, _)| t.as_ref())
    }

    pub fn tools(&self) -> impl Iterator<Item = (&dyn Tool, &PluginInfo)> {
        self.tools.values().map(|(t, i)| (t.as_ref(), &self.plugins[*i]))
    }
}

impl Services for Registry {
    fn backbone_loader(&self, name: &str) -> Option<&dyn BackboneLoader> {
        self.backbone_loaders.get(name).map(|(l, _)| l.as_ref())
    }

    fn pet_type(&self, name: &str) -> Option<&dyn PetType> {
        self.pet_types.get(name).map(|(p, _)| p.as_ref())
    }

    fn pet_types(&self) -> Vec<&dyn PetType> {
        self.pet_types.values().map(|(p, _)| p.as_ref()).collect()
    }
}

/// Refuses a file whose exported stamp (the sdk's fingerprint, read from the file without
/// loading it) is missing or differs from this petnas's: a refused file runs no code.
fn check_stamp(bytes: &[u8]) -> Result<()> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file =
        object::File::parse(bytes).context("cannot be loaded as a shared library (not an ELF file)")?;
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(STAMP_SYMBOL))
        .with_context(|| format!("not a petnas plugin of this contract: it exports no `{STAMP_SYMBOL}` (built against petnas-sdk before contract 5?)"))?;
    let stamp = symbol
        .section_index()
        .and_then(|index| file.section_by_index(index).ok())
        .and_then(|section| {
            let data = section.data().ok()?;
            let start = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
            data.get(start..start.checked_add(usize::try_from(symbol.size()).ok()?)?)
        })
        .with_context(|| format!("its `{STAMP_SYMBOL}` does not lie inside the file"))?;
    if stamp == STAMP {
        return Ok(());
    }
    let theirs = String::from_utf8_lossy(stamp);
    let contract = |fingerprint: &str| {
        fingerprint.split("; ").find_map(|part| part.strip_prefix("contract ")).map(str::to_string)
    };
    if let Some(version) = contract(&theirs).filter(|v| *v != CONTRACT_VERSION.to_string()) {
        anyhow::bail!(
            "plugin contract version {version} differs from this petnas's {CONTRACT_VERSION}; rebuild the plugin against this petnas"
        );
    }
    anyhow::bail!(
        "build fingerprint mismatch: the plugin was built with `{theirs}`, this petnas with `{FINGERPRINT}`; rebuild the plugin with the same toolchain and petnas-sdk"
    )
}

/// A plugin folder that users other than its owner can write to lets them run code in
/// every petnas run: say so.
fn warn_if_others_can_write(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else { return };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "plugin folder is writable by every user (mode {:o}): anyone on this machine can put code there that petnas runs; `chmod o-w` it",
            mode & 0o7777
        );
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
