//! Seeded parameter initialisation. Stages draw from their own generator, not libtorch's
//! global one, which parallel stages share: the same seed gives the same values whatever runs
//! beside it.
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

/// Normal(0, std²) values of the given shape, trainable, on `device`.
pub fn normal(shape: &[i64], std: f64, seed: u64, device: Device) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape).to_device(device).set_requires_grad(true)
}

/// Uniform(-bound, bound) values (PyTorch's Kaiming-uniform bound for linear layers is
/// `1/sqrt(fan_in)`), trainable, on `device`.
pub fn uniform(shape: &[i64], bound: f64, seed: u64, device: Device) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
    Tensor::from_slice(&values).view(shape).to_device(device).set_requires_grad(true)
}

/// Zeros of the given shape, trainable, on `device`.
pub fn zeros(shape: &[i64], device: Device) -> Tensor {
    Tensor::zeros(shape, (Kind::Float, device)).set_requires_grad(true)
}

/// A seed for one part of a stage (a site, a parameter), derived from the stage's seed.
pub fn derive_seed(seed: u64, part: &str) -> u64 {
    // FNV-1a over the part's name, mixed with the seed.
    let mut hash: u64 = 0xcbf29ce484222325 ^ seed.wrapping_mul(0x9e3779b97f4a7c15);
    for byte in part.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}
