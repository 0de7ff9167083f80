//! `petnas version`: versions, the build fingerprint and where libtorch is.
/// `cuda` says what loading libtorch_cuda found at start-up.
pub(super) fn execute(cuda: &str) -> i32 {
    println!(
        "petnas {}\nfingerprint: {}\nlibtorch: {}\ncuda: {} ({cuda})",
        env!("CARGO_PKG_VERSION"),
        petnas_sdk::FINGERPRINT,
        option_env!("PETNAS_LIBTORCH_DIR").unwrap_or("?"),
        tch::Cuda::is_available()
    );
    0
}
