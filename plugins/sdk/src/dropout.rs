//! Dropout for a forward pass, with masks from a counter-based generator on the CPU.
//!
//! libtorch's CPU `bernoulli_` draws one Mersenne-Twister number per element, serially: for
//! BERT's attention probabilities (batch × heads × len × len) that was a sixth of a LoRA
//! training step. Here each mask element takes 16 bits of a SplitMix64 hash of (pass key,
//! call, element), filled in parallel, so a mask depends only on the seed of the pass and its
//! place in the pass — not on threads, nor on what other stages draw from libtorch's global
//! generator meanwhile. On CUDA, libtorch's own (Philox) dropout is already fast and is used,
//! except in a pass that recomputes layers (activation checkpointing), whose masks must be
//! drawn again alike.
use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Kind, Tensor};

/// Which rates a training pass uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rates {
    /// The rates the checkpoint's config sets.
    Configured,
    /// This rate for hidden states and attention alike.
    Fixed(f64),
}

/// Dropout in one forward pass: off for evaluation, or on with its rates and mask stream.
#[derive(Debug)]
pub struct Dropout {
    training: Option<Rates>,
    key: u64,
    calls: AtomicU64,
    /// Masks from the counter on every device, so that [`Dropout::seek`] replays them.
    replayable: bool,
}

impl Dropout {
    /// Evaluation: no dropout.
    pub fn off() -> Dropout {
        Dropout { training: None, key: 0, calls: AtomicU64::new(0), replayable: false }
    }

    /// Training: masks drawn from `seed`'s stream, one mask after another.
    pub fn training(rates: Rates, seed: u64) -> Dropout {
        Dropout { training: Some(rates), key: splitmix64(seed), calls: AtomicU64::new(0), replayable: false }
    }

    /// Training whose masks can be drawn again ([`Dropout::seek`]), on any device.
    pub fn replayable(rates: Rates, seed: u64) -> Dropout {
        Dropout { replayable: true, ..Dropout::training(rates, seed) }
    }

    /// Where the mask stream stands: the masks drawn so far.
    pub fn position(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Draws the next masks from `position` again (in a replayable pass: elsewhere, on CUDA,
    /// libtorch's generator draws them).
    pub fn seek(&self, position: u64) {
        self.calls.store(position, Ordering::Relaxed);
    }

    pub fn is_training(&self) -> bool {
        self.training.is_some()
    }

    /// The rate to use where the checkpoint configures `configured` (0 when off).
    pub fn rate(&self, configured: f64) -> f64 {
        match self.training {
            None => 0.0,
            Some(Rates::Configured) => configured,
            Some(Rates::Fixed(p)) => p,
        }
    }

    /// `x` with each element zeroed with probability `p` and the rest scaled by `1/(1-p)`;
    /// `x` itself when off or `p` is 0.
    pub fn apply(&self, x: Tensor, p: f64) -> Tensor {
        if !self.is_training() || p <= 0.0 {
            return x;
        }
        if x.device() != Device::Cpu && !self.replayable {
            return x.dropout(p, true);
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        // In the tensor's own dtype and place: a bf16 hidden state stays bf16.
        let mask = self.mask(&x.size(), p, call).to_device(x.device());
        let mask = if x.kind() == Kind::Float { mask } else { mask.to_kind(x.kind()) };
        x * mask
    }

    /// A mask of `shape`: `1/(1-p)` with probability `1 - p` (to 1/65536), else 0. The scale
    /// is in the mask so that dropout is one multiplication forward and one backward.
    fn mask(&self, shape: &[i64], p: f64, call: u64) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        let threshold = (p * 65536.0).round() as u64;
        let kept = (1.0 / (1.0 - p)) as f32;
        let key = splitmix64(self.key ^ call.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        // SAFETY: `mask` is a fresh contiguous float tensor of `n` elements that nothing else
        // refers to until it is returned.
        let values = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, n) };
        let threads = if n < 1 << 16 { 1 } else { tch::get_num_threads().max(1) as usize };
        // Whole words of four elements per chunk, so a word's place never depends on the split.
        let chunk = (n.div_ceil(threads).div_ceil(4) * 4).max(4);
        if threads == 1 {
            fill(values, key, 0, threshold, kept);
        } else {
            std::thread::scope(|scope| {
                for (c, part) in values.chunks_mut(chunk).enumerate() {
                    scope.spawn(move || fill(part, key, (c * chunk / 4) as u64, threshold, kept));
                }
            });
        }
        mask
    }
}

fn fill(part: &mut [f32], key: u64, first_word: u64, threshold: u64, kept: f32) {
    for (w, four) in part.chunks_mut(4).enumerate() {
        let bits = splitmix64(key.wrapping_add((first_word + w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        for (j, value) in four.iter_mut().enumerate() {
            *value = if (bits >> (16 * j)) & 0xffff >= threshold { kept } else { 0.0 };
        }
    }
}
/// SplitMix64's output function: a bijective 64-bit mix.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(d: &Dropout, n: i64, p: f64) -> Vec<f32> {
        Vec::<f32>::try_from(d.apply(Tensor::ones([n], (Kind::Float, Device::Cpu)), p)).unwrap()
    }

    #[test]
    fn drops_at_the_rate_and_scales_the_rest() {
        let d = Dropout::training(Rates::Configured, 7);
        let values = kept(&d, 1_000_000, 0.1);
        let dropped = values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64;
        assert!((dropped - 0.1).abs() < 0.002, "dropped {dropped}");
        assert!(values.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
    }

    #[test]
    fn same_seed_same_masks_whatever_the_threads_and_calls_differ() {
        let first = kept(&Dropout::training(Rates::Configured, 3), 10_001, 0.5);
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let d = Dropout::training(Rates::Configured, 3);
        let again = kept(&d, 10_001, 0.5);
        let second_call = kept(&d, 10_001, 0.5);
        tch::set_num_threads(threads);
        assert_eq!(first, again);
        assert_ne!(first, second_call);
        assert_ne!(first, kept(&Dropout::training(Rates::Configured, 4), 10_001, 0.5));
    }

    #[test]
    fn off_and_zero_rate_leave_the_tensor_alone() {
        assert!(kept(&Dropout::off(), 100, 0.5).iter().all(|v| *v == 1.0));
        assert_eq!(Dropout::off().rate(0.1), 0.0);
        assert!(kept(&Dropout::training(Rates::Fixed(0.0), 1), 100, 0.0).iter().all(|v| *v == 1.0));
        assert_eq!(Dropout::training(Rates::Fixed(0.3), 1).rate(0.1), 0.3);
    }

    #[test]
    fn gradient_flows_through_kept_entries_only() {
        let x = Tensor::ones([1000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = Dropout::training(Rates::Configured, 9).apply(x.shallow_clone(), 0.25);
        y.sum(Kind::Float).backward();
        let (y, g) = (Vec::<f32>::try_from(y.detach()).unwrap(), Vec::<f32>::try_from(x.grad()).unwrap());
        assert_eq!(y, g);
    }
}
