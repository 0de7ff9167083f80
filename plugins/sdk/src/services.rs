//! What the runner offers every plugin at run time: the backbone loaders and PET types that
//! any plugin registered, so that a stage can rebuild a model described by an artifact.
use crate::model::{BackboneLoader, PetType};

pub trait Services: Send + Sync {
    fn backbone_loader(&self, name: &str) -> Option<&dyn BackboneLoader>;
    fn pet_type(&self, name: &str) -> Option<&dyn PetType>;
    fn pet_types(&self) -> Vec<&dyn PetType>;
}
