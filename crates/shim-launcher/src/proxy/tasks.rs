//! What the proxy does at the three task calls it acts on, with the node's code from
//! flox-runc: the create's spec edit, the exec's process wrap and the delete's cleanup. Each
//! handler turns a request into the request to forward (or an error to answer with) and says
//! what to do once the shim has answered.
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use imageless_node::config::NodeConfig;
use prost::Message;

use super::task_api::{self, CreateTaskRequest, DeleteRequest, ExecProcessRequest, RuncChoice};
use super::ttrpc::{CODE_INVALID_ARGUMENT, CODE_UNKNOWN};

/// What the proxy does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward this payload (the original or a rewritten one).
    Forward { payload: Vec<u8>, then: AfterReply },
    /// Do not forward; answer with this gRPC error.
    Refuse { code: i32, message: String },
}

/// Work that waits for the shim's answer to a forwarded request.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterReply {
    Nothing,
    /// A flox container's create: if runc fails, remove what the edit left on the node.
    CleanupIfFailed(String),
    /// A flox container's delete: once runc has deleted it, remove our state and overlay.
    CleanupIfDeleted(String),
}

/// The containers of this shim whose runc calls go straight to the real runc, and whose flox
/// work (exec wraps, cleanup) the proxy therefore does. Others are left to `flox-runc`.
#[derive(Default)]
pub struct Tasks {
    direct: Mutex<HashSet<String>>,
}

impl Tasks {
    /// `Create`: point the shim at the real runc and do flox-runc's create work in-process.
    /// May take long (a cold environment is fetched and rendered here).
    pub fn create(&self, payload: Vec<u8>) -> Outcome {
        let Ok(create) = CreateTaskRequest::decode(&payload[..]) else { return forward(payload) };
        let config = match NodeConfig::load(None) {
            Ok(c) => c,
            Err(e) => return refuse(CODE_UNKNOWN, e.to_string()),
        };
        let runc = match flox_runc::find_runc(&config) {
            Ok(r) => r,
            Err(e) => return refuse(CODE_UNKNOWN, e.to_string()),
        };
        let payload = match task_api::direct_runc(&payload, &create, &runc.display().to_string()) {
            RuncChoice::Direct(rewritten) => rewritten.unwrap_or(payload),
            RuncChoice::Unknown => {
                tracing::info!(id = create.id, "runtime options of an unknown kind: left to the configured runc");
                return forward(payload);
            }
        };
        match flox_runc::prepare_bundle(&config, Path::new(&create.bundle), &create.id) {
            Ok(true) => {
                self.direct.lock().expect("not poisoned").insert(create.id.clone());
                Outcome::Forward { payload, then: AfterReply::CleanupIfFailed(create.id) }
            }
            Ok(false) => Outcome::Forward { payload, then: AfterReply::Nothing },
            Err(e) => {
                let code = match e {
                    flox_runc::CreateError::Options(_) | flox_runc::CreateError::Token(_) => CODE_INVALID_ARGUMENT,
                    _ => CODE_UNKNOWN,
                };
                refuse(code, e.to_string())
            }
        }
    }

    /// `Exec`: wrap the process like the container's main process (containerd builds it from
    /// its stored spec, not from the config.json the create edited).
    pub fn exec(&self, payload: Vec<u8>) -> Outcome {
        let Ok(exec) = ExecProcessRequest::decode(&payload[..]) else { return forward(payload) };
        let (Some(spec), true) = (&exec.spec, self.is_direct(&exec.id)) else { return forward(payload) };
        let config = match NodeConfig::load(None) {
            Ok(c) => c,
            Err(e) => return refuse(CODE_UNKNOWN, e.to_string()),
        };
        let Some(wrap) = flox_runc::ExecWrap::for_container(&config, &exec.id) else { return forward(payload) };
        let process = match wrap.apply(&spec.value) {
            Ok(p) => p,
            Err(e) => return refuse(CODE_INVALID_ARGUMENT, e.to_string()),
        };
        match task_api::with_exec_process(&payload, spec, process) {
            Some(payload) => forward(payload),
            None => refuse(CODE_INVALID_ARGUMENT, "flox: the exec request is not valid protobuf".into()),
        }
    }

    /// `Delete` of a container (not of an exec process): clean up once runc has deleted it.
    pub fn delete(&self, payload: Vec<u8>) -> Outcome {
        let then = match DeleteRequest::decode(&payload[..]) {
            Ok(d) if d.exec_id.is_empty() && self.is_direct(&d.id) => AfterReply::CleanupIfDeleted(d.id),
            _ => AfterReply::Nothing,
        };
        Outcome::Forward { payload, then }
    }

    /// Runs `then` once the shim has answered (`ok`: the call succeeded).
    pub fn after_reply(&self, then: AfterReply, ok: bool) {
        let id = match then {
            AfterReply::CleanupIfFailed(id) if !ok => id,
            AfterReply::CleanupIfDeleted(id) if ok => id,
            _ => return,
        };
        match NodeConfig::load(None) {
            Ok(config) => flox_runc::cleanup(&config, &id),
            Err(e) => tracing::warn!(id, "cannot clean up: {e}"),
        }
        self.direct.lock().expect("not poisoned").remove(&id);
    }

    fn is_direct(&self, id: &str) -> bool {
        self.direct.lock().expect("not poisoned").contains(id)
    }
}

fn forward(payload: Vec<u8>) -> Outcome {
    Outcome::Forward { payload, then: AfterReply::Nothing }
}

fn refuse(code: i32, message: String) -> Outcome {
    Outcome::Refuse { code, message }
}
