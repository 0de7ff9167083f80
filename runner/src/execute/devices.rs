//! Which device each local stage runs on. `--devices` lists the GPUs a run may use and
//! `--jobs-per-device K` lets K stages share one. A stage goes where the artifacts it takes
//! from memory are, while that device has a free slot, so that a cell's chain stays on one
//! GPU; otherwise to the least busy device with a free slot, where its inputs are read from
//! the run folder onto that device.
use anyhow::{bail, Result};

pub struct DeviceSlots {
    devices: Vec<tch::Device>,
    per_device: usize,
    busy: Vec<usize>,
}

impl DeviceSlots {
    pub fn new(devices: Vec<tch::Device>, per_device: usize) -> DeviceSlots {
        let busy = vec![0; devices.len()];
        DeviceSlots { devices, per_device: per_device.max(1), busy }
    }

    /// A slot for a stage whose in-memory inputs are on device `near`: that device while it
    /// has room, else the least busy one with room (the first of equals); `None` when all
    /// are full.
    pub fn take(&mut self, near: Option<usize>) -> Option<usize> {
        let free = |i: usize| self.busy[i] < self.per_device;
        let chosen = near
            .filter(|&i| i < self.busy.len() && free(i))
            .or_else(|| (0..self.busy.len()).filter(|&i| free(i)).min_by_key(|&i| (self.busy[i], i)))?;
        self.busy[chosen] += 1;
        Some(chosen)
    }

    pub fn release(&mut self, slot: usize) {
        self.busy[slot] = self.busy[slot].saturating_sub(1);
    }

    pub fn device(&self, slot: usize) -> tch::Device {
        self.devices[slot]
    }
}

pub fn name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

/// `cuda:0,cuda:1`, as `--devices` takes them.
pub fn names(devices: &[tch::Device]) -> String {
    devices.iter().map(|d| name(*d)).collect::<Vec<_>>().join(",")
}

/// `--devices cuda:0,cuda:2`: the CUDA devices named, each present on a machine with `count`.
pub fn parse_list(text: &str, count: usize) -> Result<Vec<tch::Device>> {
    let mut devices = Vec::new();
    for item in text.split(',').map(str::trim) {
        let Some(n) = item.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) else {
            bail!("--devices {text}: `{item}` is not a CUDA device; write them as cuda:0,cuda:1,…");
        };
        if n >= count {
            bail!("--devices {text}: cuda:{n} requested, but this machine has {count} CUDA device(s)");
        }
        if devices.contains(&tch::Device::Cuda(n)) {
            bail!("--devices {text}: cuda:{n} is listed twice");
        }
        devices.push(tch::Device::Cuda(n));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device::Cuda;

    #[test]
    fn spreads_stages_over_devices_at_most_k_each() {
        let mut slots = DeviceSlots::new(vec![Cuda(0), Cuda(1)], 2);
        let taken: Vec<_> = (0..5).map(|_| slots.take(None)).collect();
        assert_eq!(taken, [Some(0), Some(1), Some(0), Some(1), None]);
        slots.release(1);
        assert_eq!(slots.take(None), Some(1));
        assert_eq!(slots.take(None), None);
    }

    #[test]
    fn a_stage_follows_its_inputs_while_their_device_has_room() {
        let mut slots = DeviceSlots::new(vec![Cuda(0), Cuda(1), Cuda(2)], 2);
        assert_eq!(slots.take(Some(2)), Some(2));
        assert_eq!(slots.take(Some(2)), Some(2));
        // cuda:2 is full: the least busy other device, the first of equals.
        assert_eq!(slots.take(Some(2)), Some(0));
        assert_eq!(slots.take(Some(2)), Some(1));
        assert_eq!(slots.take(None), Some(0));
        assert_eq!(slots.device(1), Cuda(1));
    }

    #[test]
    fn one_device_shared_by_k_cells() {
        let mut slots = DeviceSlots::new(vec![Cuda(0)], 16);
        assert!((0..16).all(|_| slots.take(Some(0)) == Some(0)));
        assert_eq!(slots.take(None), None);
    }

    #[test]
    fn device_lists_are_checked_against_the_machine() {
        assert_eq!(parse_list("cuda:0, cuda:2", 4).unwrap(), [Cuda(0), Cuda(2)]);
        let err = |text: &str| parse_list(text, 2).unwrap_err().to_string();
        assert!(err("cuda:2").contains("this machine has 2 CUDA device(s)"), "{}", err("cuda:2"));
        assert!(err("cuda:0,cuda:0").contains("listed twice"));
        assert!(err("gpu0").contains("`gpu0` is not a CUDA device"));
        assert!(err("cuda:0,").contains("`` is not a CUDA device"));
    }
}
