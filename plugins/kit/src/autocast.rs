//! Autocast (mixed precision), as `torch.autocast(device_type, dtype=torch.bfloat16)` or
//! `torch.float16`: matrix products run in bf16 or fp16, precision-sensitive ops (softmax,
//! norms, losses) in fp32, and parameters and optimizer state stay fp32. (fp16's narrow range
//! needs its loss scaled: [`crate::optim::LossScale`].)
//!
//! tch only switches CUDA autocast on, in libtorch's default dtype (fp16). libtorch's
//! per-device switches, `at::autocast::set_autocast_enabled` and `set_autocast_dtype`, are
//! exported C++ functions taking one-byte enums, so they are looked up by their (Itanium ABI)
//! names in the libtorch this process already has loaded.
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use tch::Device;

type SetEnabled = unsafe extern "C" fn(device_type: i8, enabled: bool);
type IsEnabled = unsafe extern "C" fn(device_type: i8) -> bool;
type SetDtype = unsafe extern "C" fn(device_type: i8, dtype: i8);
type GetDtype = unsafe extern "C" fn(device_type: i8) -> i8;

struct Switches {
    set_enabled: SetEnabled,
    is_enabled: IsEnabled,
    set_dtype: SetDtype,
    get_dtype: GetDtype,
}

/// `c10::DeviceType` and `c10::ScalarType` values (c10/core/DeviceType.h, ScalarType.h).
const CPU: i8 = 0;
const CUDA: i8 = 1;
const HALF: i8 = 5;
const BFLOAT16: i8 = 15;

/// The precision of autocast's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Bf16,
    Fp16,
}

impl Precision {
    fn scalar_type(self) -> i8 {
        match self {
            Precision::Bf16 => BFLOAT16,
            Precision::Fp16 => HALF,
        }
    }
}

fn switches() -> Result<&'static Switches> {
    static SWITCHES: OnceLock<Result<Switches, String>> = OnceLock::new();
    SWITCHES
        .get_or_init(|| {
            let this = libloading::os::unix::Library::this();
            // SAFETY: the names are libtorch's own exports (PyTorch 2.11, the version the
            // fingerprint pins), and the types spell their C++ signatures: one-byte enums and
            // bool passed by value, returning void, bool or a one-byte enum.
            unsafe {
                Ok(Switches {
                    set_enabled: symbol(&this, "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb")?,
                    is_enabled: symbol(&this, "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE")?,
                    set_dtype: symbol(
                        &this,
                        "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE",
                    )?,
                    get_dtype: symbol(&this, "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE")?,
                })
            }
        })
        .as_ref()
        .map_err(|e| anyhow!("autocast is unavailable: {e}"))
}

/// The function `name` of the process's libtorch, as a `T` (a function pointer type).
///
/// # Safety
/// `T` must be the function's true signature.
unsafe fn symbol<T: Copy>(lib: &libloading::os::unix::Library, name: &str) -> Result<T, String> {
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|e| format!("libtorch has no `{name}`: {e}"))
}

/// Whether autocast is on for `device`'s kind of device in this thread.
pub fn enabled(device: Device) -> bool {
    let device_type = if device == Device::Cpu { CPU } else { CUDA };
    // SAFETY: see `switches`; a read of libtorch's thread-local autocast state.
    switches().is_ok_and(|s| unsafe { (s.is_enabled)(device_type) })
}

/// Runs `f` under autocast in `precision` on `device`'s kind of device, or plainly without
/// one. The previous autocast state is restored afterwards (and autocast's cast cache cleared).
pub fn under<T>(precision: Option<Precision>, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    let Some(precision) = precision else { return Ok(f()) };
    let s = switches()?;
    let device_type = if device == Device::Cpu { CPU } else { CUDA };
    // SAFETY: see `switches`; the calls only flip libtorch's thread-local autocast state.
    let (was_enabled, was_dtype) = unsafe { ((s.is_enabled)(device_type), (s.get_dtype)(device_type)) };
    unsafe {
        (s.set_dtype)(device_type, precision.scalar_type());
        (s.set_enabled)(device_type, true);
    }
    // SAFETY: torch-sys's C wrappers of libtorch's autocast nesting counter and cast cache.
    unsafe { torch_sys::at_autocast_increment_nesting() };
    let out = f();
    unsafe {
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        (s.set_enabled)(device_type, was_enabled);
        (s.set_dtype)(device_type, was_dtype);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::Precision;

    #[test]
    fn products_run_in_bf16_or_fp16_inside_and_fp32_outside() {
        let x = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([3, 8], (Kind::Float, Device::Cpu));
        for (precision, kind) in [(Precision::Bf16, Kind::BFloat16), (Precision::Fp16, Kind::Half)] {
            let inside = super::under(Some(precision), Device::Cpu, || {
                (x.linear::<Tensor>(&w, None), x.softmax(-1, None))
            })
            .unwrap();
            assert_eq!(inside.0.kind(), kind);
            assert_eq!(inside.1.kind(), Kind::Float);
        }
        assert_eq!(x.linear::<Tensor>(&w, None).kind(), Kind::Float);
        assert_eq!(
            super::under(None, Device::Cpu, || x.linear::<Tensor>(&w, None)).unwrap().kind(),
            Kind::Float
        );
    }
}
