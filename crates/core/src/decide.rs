//! What the runc wrapper does with a container, decided from its spec alone.
use crate::activation::Mode;
use crate::env_ref::EnvRef;
use crate::pod_options::{OptionsError, PodOptions, SkipLists};
use crate::spec_edit::{ContainerInfo, ContainerKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand the spec to runc untouched (not a CRI container, or in skip-containers).
    PassThrough,
    /// The pod sandbox: untouched, but start fetching the environment now.
    Prefetch { environment: EnvRef, mode: Mode },
    /// A flox container: resolve the environment and edit the spec.
    Wrap(PodOptions),
}

pub fn decide(info: &ContainerInfo) -> Result<Decision, OptionsError> {
    match info.kind {
        ContainerKind::Unknown => Ok(Decision::PassThrough),
        // Invalid options are reported at container create, where they name the container.
        ContainerKind::Sandbox => Ok(match PodOptions::from_annotations(&info.annotations) {
            Ok(o) => Decision::Prefetch { environment: o.environment, mode: o.mode },
            Err(_) => Decision::PassThrough,
        }),
        ContainerKind::Container => {
            let name = info.name.as_deref().unwrap_or_default();
            if SkipLists::from_annotations(&info.annotations).containers.contains(name) {
                return Ok(Decision::PassThrough);
            }
            PodOptions::from_annotations(&info.annotations).map(Decision::Wrap)
        }
    }
}
