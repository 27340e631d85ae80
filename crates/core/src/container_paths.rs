//! Where the environment appears inside a flox container. The runc wrapper mounts these and
//! the activator reads them, so both take them from here.

/// The rendered environment for the pod's mode (`FLOX_ENV`), read-only.
pub const ENV_DIR: &str = "/run/flox/env";
/// The static activator binary, read-only; it becomes `process.args[0]`.
pub const ACTIVATOR: &str = "/run/flox/activate";
/// A writable tmpfs for `FLOX_ENV_CACHE`; gone with the container, so nothing leaks on the node.
pub const CACHE_DIR: &str = "/run/flox/cache";
/// A small tmpfs of ours, mode 0700 and owned by the container's user: the main process's
/// activation records here the environment it exec'd with, and exec processes attach to it
/// instead of running `hook.on-activate` again. Not under `FLOX_ENV_CACHE` (the workload's own
/// directory), and private to that user because the environment may hold secrets.
pub const ACTIVATION_STATE_DIR: &str = "/run/flox/activation";
/// The activator's option that marks an exec process: attach to the main process's activation.
pub const ATTACH_FLAG: &str = "--attach";
/// The activation data inside the rendered environment.
pub const ACTIVATION_DATA: &str = "/run/flox/env/activate.d/imageless.json";
/// Relative path of the activation data inside a rendered environment tree.
pub const ACTIVATION_DATA_REL: &str = "activate.d/imageless.json";
/// Where Kubernetes users mount the FloxHub token secret (../seeds: "a known place").
pub const TOKEN_MOUNT: &str = "/var/run/secrets/flox.dev";
/// The file inside that secret holding the token.
pub const TOKEN_FILE: &str = "floxhub-token";
