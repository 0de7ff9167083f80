//! The search of Lawton et al. (2023), on the model contract only — it knows no particular
//! PET type: build a supernet, score prune groups and parameters with a first-order Taylor
//! estimate of the loss change, prune structured (groups, physically cut) then unstructured
//! (masks) to a parameter budget — in stages, or while the supernet trains — and report the
//! architecture found.
mod prune;
mod report;
mod scores;
mod stages;
mod supernet;
mod while_training;

use petnas_sdk::Registrar;

petnas_sdk::declare_plugin!(register);

fn register(registrar: &mut Registrar) {
    registrar.stage(supernet::BuildSupernet);
    registrar.stage(stages::Score);
    registrar.stage(stages::PruneStructured);
    registrar.stage(stages::PruneUnstructured);
    registrar.stage(while_training::PruneWhileTraining);
    registrar.stage(report::Report);
}
