//! The local backend: stages in this process, on worker threads with libtorch's threads
//! divided between them, each on a device slot (several stages may share a GPU).
use anyhow::{Context, Result};

use crate::execute::backend::{Backend, Slot, Started};
use crate::execute::devices::DeviceSlots;
use crate::execute::job::RunWith;
use crate::pipeline::resources::Resources;
use crate::pipeline::DType;
use crate::plugins::Registry;

/// What the executor knows about the machine it runs on.
#[derive(Clone)]
pub struct Placement {
    /// Where local stages run, each taking one (`crate::execute::devices`).
    pub devices: Vec<tch::Device>,
    /// Stages sharing one device at most.
    pub per_device: usize,
    pub dtype: DType,
    /// libtorch intra-op threads for each parallel stage.
    pub threads_per_job: usize,
}

pub struct LocalPool {
    pool: rayon::ThreadPool,
    slots: DeviceSlots,
    has_cuda: bool,
    dtype: DType,
    registry: &'static Registry,
}

impl LocalPool {
    pub fn new(jobs: usize, placement: &Placement, registry: &'static Registry) -> Result<LocalPool> {
        let threads_per_job = placement.threads_per_job;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .thread_name(|i| format!("petnas-job-{i}"))
            .start_handler(move |_| tch::set_num_threads(threads_per_job as i32))
            .build()
            .context("cannot start the worker threads")?;
        Ok(LocalPool {
            pool,
            slots: DeviceSlots::new(placement.devices.clone(), placement.per_device),
            has_cuda: placement.devices.iter().any(|d| d.is_cuda()),
            dtype: placement.dtype,
            registry,
        })
    }
}

impl Backend for LocalPool {
    fn auto_is_cuda(&self, _resources: &Resources) -> bool {
        self.has_cuda
    }

    fn place(&mut self, near: Option<usize>) -> Result<Option<Slot>> {
        let index = self.slots.take(near).context("no free device slot within --jobs")?;
        Ok(Some(Slot { index, device: self.slots.device(index) }))
    }

    fn release(&mut self, slot: Slot) {
        self.slots.release(slot.index);
    }

    fn start(&self, s: Started) {
        let (dtype, registry) = (self.dtype, self.registry);
        self.pool.spawn(move || {
            let with = RunWith {
                dtype,
                progress: s.progress,
                cancel: s.cancel,
                allowed_writes: s.allowed_writes,
                registry,
            };
            let result = s.job.run(with);
            (s.finish)(result.map(|(artifact, record)| (Some(artifact), record)));
        });
    }
}
