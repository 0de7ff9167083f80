//! The plugin host: discovery order on the search path, refusal of plugins built
//! differently, listing, and plugin log events reaching the runner's log.
use std::path::{Path, PathBuf};

use petnas_e2e::{demo_plugin, petnas_bin, plugin_file, Scratch};

fn plugins_json(s: &Scratch, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plugins", "--json"];
    all.extend_from_slice(args);
    let run = s.petnas(&all);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("plugins --json")
}

fn path_of(listing: &serde_json::Value, plugin: &str) -> PathBuf {
    let found = listing["plugins"].as_array().unwrap().iter().find(|p| p["name"] == plugin);
    PathBuf::from(found.unwrap_or_else(|| panic!("{plugin} not loaded: {listing}"))["path"].as_str().unwrap())
}

fn copy_into(dir: &Path, file: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let target = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &target).unwrap();
    target
}

#[test]
fn plugins_lists_stage_kinds_with_their_options() {
    let s = Scratch::new();
    let run = s.petnas(&["plugins"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("  demo.fit  — logistic regression on the training split by full-batch gradient descent  [dataset → model]  (petnas-demo)"), "{}", run.stdout);
    assert!(run.stdout.contains("      steps: integer (default 200) — gradient steps"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "      predictions: path (written, inside the run folder) (default \"predictions.tsv\")"
        ),
        "{}",
        run.stdout
    );
    let listing = plugins_json(&s, &[]);
    let names = |key: &str, field: &str| -> Vec<String> {
        listing[key].as_array().unwrap().iter().map(|k| k[field].as_str().unwrap().to_string()).collect()
    };
    // Listed once each, in name order; every plugin's, a new one without editing this list.
    for (key, field) in [("stages", "kind"), ("pet_types", "name"), ("commands", "name")] {
        let listed = names(key, field);
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(listed, sorted, "{key}");
    }
    let kinds = names("stages", "kind");
    for kind in [
        "data.load",
        "demo.data",
        "demo.fit",
        "glue.evaluate",
        "nas.prune_while_training",
        "pet.export",
        "train.fit",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    let pets = names("pet_types", "name");
    for pet in ["adapter", "bitfit", "full", "ia3", "lora", "pair"] {
        assert!(pets.iter().any(|p| p == pet), "{pet} in {pets:?}");
    }
    let commands = names("commands", "name");
    assert_eq!(commands, ["encode", "glue-throughput", "score"]);

    // Without the tests' plugin folder, a user's petnas lists no demo stages.
    let out = s.command(&["plugins", "--json"]).env_remove("PETNAS_PLUGIN_PATH").output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> =
        listing["stages"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"glue.load") && !kinds.iter().any(|k| k.starts_with("demo.")), "{kinds:?}");
}

#[test]
fn discovery_order_is_plugin_dir_then_env_then_beside_the_binary() {
    let s = Scratch::new();
    let from_cli = copy_into(&s.path().join("cli"), &plugin_file("glue"));
    let from_env = copy_into(&s.path().join("env"), &plugin_file("glue"));
    let beside = plugin_file("glue");

    let mut cmd = s.command(&["plugins", "--json", "--plugin-dir", "cli"]);
    let out = cmd.env("PETNAS_PLUGIN_PATH", s.path().join("env")).output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(path_of(&listing, "petnas-glue"), from_cli);
    let shadowed: Vec<&str> =
        listing["shadowed"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(shadowed, [from_env.to_str().unwrap(), beside.to_str().unwrap()]);

    let mut cmd = s.command(&["plugins", "--json"]);
    let out = cmd.env("PETNAS_PLUGIN_PATH", s.path().join("env")).output().unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(path_of(&listing, "petnas-glue"), from_env);

    assert_eq!(path_of(&plugins_json(&s, &[]), "petnas-glue"), beside);
}

/// The host's fingerprint, as `petnas version` prints it.
fn host_fingerprint() -> String {
    let out = std::process::Command::new(petnas_bin())
        .arg("version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().find_map(|l| l.strip_prefix("fingerprint: ")).expect("fingerprint line").to_string()
}

#[test]
fn a_plugin_built_differently_is_refused_naming_both_fingerprints() {
    let s = Scratch::new();
    // A binary with its own plugin folder: only the files placed beside it are found.
    let bin_dir = s.path().join("bin");
    let bin = copy_into(&bin_dir, &petnas_bin());
    copy_into(&bin_dir, &demo_plugin("demo_eval"));
    let demo = copy_into(&bin_dir, &demo_plugin("demo"));

    // What a plugin built by another compiler looks like: the same file, another fingerprint.
    let host = host_fingerprint();
    let foreign = host.replacen("rustc 1.", "rustc 0.", 1);
    assert_ne!(host, foreign, "fingerprint names the compiler: {host}");
    let bytes = std::fs::read(&demo).unwrap();
    let patched = replace_all(&bytes, host.as_bytes(), foreign.as_bytes());
    assert_ne!(bytes, patched, "the fingerprint is embedded in the plugin");
    std::fs::write(&demo, patched).unwrap();

    let out = std::process::Command::new(&bin)
        .args(["plugins", "--json"])
        .env_remove("PETNAS_PLUGIN_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = &listing["refused"][0];
    assert_eq!(refused["path"], demo.to_str().unwrap());
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the plugin was built with `{foreign}`, this petnas with `{host}`")),
        "{reason}"
    );
    let kinds: Vec<&str> =
        listing["stages"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["demo.evaluate"], "the other plugin still loads");

    s.write("p.yaml", "name: x\nstages:\n  data: {use: demo.data}\n");
    let out = std::process::Command::new(&bin)
        .args(["validate", "p.yaml"])
        .current_dir(s.path())
        .env_remove("PETNAS_PLUGIN_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("p.yaml:3:15: error: unknown stage kind `demo.data`"), "{stderr}");
    assert!(
        stderr.contains(&format!("note: plugin {} was refused: build fingerprint mismatch", demo.display())),
        "{stderr}"
    );
}

#[test]
fn the_fingerprint_covers_the_sdks_source() {
    // The hash the build put into the fingerprint is the one of the sdk's source as it is:
    // a plugin built against another version of the contract's code carries another one,
    // and is refused as above.
    use sha2::{Digest, Sha256};
    let src = petnas_e2e::workspace().join("plugins/sdk/src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.file_name().unwrap().to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file).unwrap());
    }
    let hex: String = hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let host = host_fingerprint();
    assert!(
        host.contains(&format!("; sdk source {hex}; ")),
        "{host} does not carry the sdk source's hash {hex}"
    );
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path().join("extra")).unwrap();
    std::fs::write(s.path().join("extra/libpetnas_bogus.so"), b"not a library").unwrap();
    let listing = plugins_json(&s, &["--plugin-dir", "extra"]);
    let refused = &listing["refused"][0];
    assert!(refused["path"].as_str().unwrap().ends_with("extra/libpetnas_bogus.so"));
    assert!(
        refused["reason"].as_str().unwrap().starts_with("cannot be loaded as a shared library"),
        "{refused}"
    );
    let loaded: Vec<&str> =
        listing["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(
        loaded.contains(&"petnas-demo") && loaded.contains(&"petnas-glue"),
        "the real plugins still load: {loaded:?}"
    );
}

#[test]
fn plugin_events_reach_the_runner_log_and_the_stage_log() {
    let s = Scratch::new();
    s.write("p.yaml", "name: logs\nstages:\n  data: {use: demo.data, with: {n: 16}}\n");
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("synthetic data made n_train=12 n_test=4 dim=8"), "{}", run.stderr);
    let log = std::fs::read_to_string(s.stage_dir("logs", "default", "data").join("log.jsonl")).unwrap();
    let event = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["target"] == "petnastest_demo")
        .unwrap_or_else(|| panic!("no event of the plugin in the stage log:\n{log}"));
    assert_eq!(event["fields"]["message"], "synthetic data made");
    assert_eq!(event["fields"]["n_train"], 12);

    // RUST_LOG filters the terminal; --log-json writes JSON lines.
    let quiet = s.command(&["run", "p.yaml", "--force", "data"]).env("RUST_LOG", "warn").output().unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("synthetic data made"));
    let json = s.petnas(&["run", "p.yaml", "--force", "data", "--log-json"]);
    let line = json.stderr.lines().find(|l| l.contains("synthetic data made")).expect("plugin event");
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(value["fields"]["n_test"], 4);
}

/// A shared library on the plugin path that is not a plugin of this build runs no code: its
/// stamp is read from the file, and a file without the right one is never loaded. The
/// library here (built with the C compiler) has a load-time constructor that leaves a mark.
/// A plugin folder every user can write to is warned about.
#[test]
fn a_refused_plugin_runs_no_code_and_a_world_writable_plugin_folder_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let dir = s.path().join("extra");
    std::fs::create_dir_all(&dir).unwrap();
    let mark = s.path().join("constructor-ran");
    let source = s.write(
        "evil.c",
        &format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void ran(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            mark.display()
        ),
    );
    let library = dir.join("libpetnas_evil.so");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .expect("a C compiler (cc)");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();

    let run = s.petnas(&["--plugin-dir", "extra", "plugins", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listing: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let refused = &listing["refused"][0];
    assert!(refused["path"].as_str().unwrap().ends_with("extra/libpetnas_evil.so"), "{listing}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .starts_with("not a petnas plugin of this contract: it exports no `PETNAS_PLUGIN_STAMP`"),
        "{refused}"
    );
    assert!(!mark.exists(), "the refused library's constructor ran");
    assert!(
        run.stderr.contains("plugin folder is writable by every user (mode 777)")
            && run.stderr.contains("extra"),
        "{}",
        run.stderr
    );
    // The library does load when asked: the check above is not vacuous.
    let python = format!("import ctypes; ctypes.CDLL('{}')", library.display());
    assert!(std::process::Command::new("python3").args(["-c", &python]).status().unwrap().success());
    assert!(mark.exists(), "the constructor leaves its mark when the library is loaded");
}

/// docs/options.md is what `petnas plugins --format markdown` prints for the plugins of this
/// build: the reference cannot drift from the declarations validate checks.
#[test]
fn the_options_reference_is_current() {
    let s = Scratch::new();
    let out =
        s.command(&["plugins", "--format", "markdown"]).env_remove("PETNAS_PLUGIN_PATH").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(petnas_e2e::workspace().join("docs/options.md")).unwrap();
    assert!(
        listed == committed && !committed.contains("demo."),
        "docs/options.md is out of date: run `target/release/petnas plugins --format markdown > docs/options.md`"
    );
    for section in [
        "### `train.fit`",
        "### `lora`",
        "Default targets: `role:query`, `role:value`.",
        "PEFT/transformers call it `r`.",
    ] {
        assert!(committed.contains(section), "{section}");
    }
}

#[test]
fn a_plugin_dir_that_does_not_exist_is_an_error() {
    let s = Scratch::new();
    let run = s.petnas(&["--plugin-dir", "no-such-folder", "plugins"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("error: --plugin-dir no-such-folder: no such folder"), "{}", run.stderr);
}

/// A plugin built against the contract and the toolkit as they are, then again after a
/// change to each (a plugin author building against another release): a toolkit-only change
/// leaves the fingerprint, and the plugin loads; a contract change does not, and the plugin is
/// refused naming both fingerprints. The plugin is petnas's own train.fit, which links the
/// toolkit, built with cargo in a copy of the workspace's sdk (with the derive of its
/// options), kit and train crates.
#[test]
fn a_toolkit_change_keeps_plugins_loading_and_a_contract_change_refuses_them() {
    let root = petnas_e2e::workspace();
    let s = Scratch::new();
    let work = s.path().join("author");
    let crates = ["plugins/sdk", "plugins/sdk-derive", "plugins/kit", "plugins/train"];
    for crate_dir in crates {
        copy_tree(&root.join(crate_dir), &work.join(crate_dir));
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = format!("members = {crates:?}");
    let manifest: String = manifest
        .lines()
        .map(|l| if l.starts_with("members = ") { members.as_str() } else { l })
        .filter(|l| !l.starts_with("petnas = "))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(work.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(root.join("Cargo.lock"), work.join("Cargo.lock")).unwrap();
    let build = || {
        let out = std::process::Command::new("cargo")
            .args(["build", "--release", "--offline", "-p", "petnas-train"])
            .current_dir(&work)
            .env("CARGO_TARGET_DIR", work.join("target"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let folder = s.path().join("plugins");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(work.join("target/release/libpetnas_train.so"), folder.join("libpetnas_train.so"))
            .unwrap();
        let out = s
            .command(&["plugins", "--json", "--plugin-dir", "plugins"])
            .env_remove("PETNAS_PLUGIN_PATH")
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let built = s.path().join("plugins/libpetnas_train.so");
    let loads = |listing: &serde_json::Value| path_of(listing, "petnas-train") == built;
    assert!(loads(&build()), "built against the contract and toolkit as they are");

    let kit = work.join("plugins/kit/src/lib.rs");
    let text = std::fs::read_to_string(&kit).unwrap();
    std::fs::write(&kit, format!("{text}\n/// A toolkit change.\npub fn added_in_a_later_release() {{}}\n"))
        .unwrap();
    assert!(loads(&build()), "a toolkit-only change: the plugin still loads");

    let sdk = work.join("plugins/sdk/src/lib.rs");
    let text = std::fs::read_to_string(&sdk).unwrap();
    std::fs::write(&sdk, format!("{text}\n/// A contract change.\npub fn added_to_the_contract() {{}}\n"))
        .unwrap();
    let listing = build();
    assert!(!loads(&listing), "a contract change: refused");
    let reason = listing["refused"][0]["reason"].as_str().unwrap().to_string();
    let host = host_fingerprint();
    assert!(
        reason.contains(&format!("this petnas with `{host}`"))
            && reason.contains("the plugin was built with `petnas-sdk"),
        "{reason}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}
