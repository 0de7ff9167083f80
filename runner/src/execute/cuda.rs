//! CUDA support lives in libtorch_cuda.so, which the linker drops as unneeded; it registers
//! CUDA with libtorch only once loaded, so `petnas` loads it at start-up where a GPU driver
//! is present.
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// Loads libtorch_cuda.so when this machine has an NVIDIA driver; returns what happened.
pub fn load_torch_cuda() -> String {
    let driver = std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::path::Path::new("/dev/nvidiactl").exists();
    if !driver {
        return "no NVIDIA driver: libtorch_cuda not loaded".into();
    }
    let mut candidates = vec![std::path::PathBuf::from("libtorch_cuda.so")];
    if let Some(dir) = option_env!("PETNAS_LIBTORCH_DIR") {
        candidates.push(std::path::Path::new(dir).join("libtorch_cuda.so"));
    }
    let mut errors = Vec::new();
    for candidate in candidates {
        // SAFETY: libtorch_cuda's initialisers only register CUDA kernels with libtorch.
        match unsafe { Library::open(Some(&candidate), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(lib) => {
                std::mem::forget(lib);
                return format!("loaded {}", candidate.display());
            }
            Err(e) => errors.push(format!("{}: {e}", candidate.display())),
        }
    }
    format!("libtorch_cuda could not be loaded ({})", errors.join("; "))
}
