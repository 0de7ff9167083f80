//! Records where libtorch lives (the venv's torch/lib) as the binary's run path, so that
//! `petnas` starts without LD_LIBRARY_PATH; LD_LIBRARY_PATH still wins when set, which is
//! how a GPU machine's own torch libraries are used.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=PETNAS_LIBTORCH_DIR={dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
