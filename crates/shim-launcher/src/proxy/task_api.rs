//! The few messages of containerd's task service (`containerd.task.v2.Task`, and v3 in
//! containerd 2.x, same messages) that the proxy reads, and how it rewrites two of them.
//!
//! Decoding uses only the fields the proxy needs (prost skips the rest). Rewriting never
//! re-encodes a partially known message: `set_field` copies every other field byte for byte,
//! so fields added by a newer containerd survive the proxy.
use prost::Message;

/// Methods of the task service the proxy acts on; everything else passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Exec,
    Delete,
}

impl Method {
    /// The method of a request to containerd's task service, if the proxy acts on it.
    pub fn of(service: &str, method: &str) -> Option<Method> {
        if !matches!(service, "containerd.task.v2.Task" | "containerd.task.v3.Task") {
            return None;
        }
        match method {
            "Create" => Some(Method::Create),
            "Exec" => Some(Method::Exec),
            "Delete" => Some(Method::Delete),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(message, optional, tag = "10")]
    pub options: Option<Any>,
}
const CREATE_OPTIONS_TAG: u32 = 10;

#[derive(Clone, PartialEq, Message)]
pub struct ExecProcessRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(message, optional, tag = "7")]
    pub spec: Option<Any>,
}
const EXEC_SPEC_TAG: u32 = 7;

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

/// Field `binary_name` of the runc shim's options (`containerd.runc.v1.Options`).
const RUNC_BINARY_NAME_TAG: u32 = 6;
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// Which runc the runc shim will call for a task created with these options.
#[derive(Debug, PartialEq, Eq)]
pub enum RuncChoice {
    /// The request, rewritten so the shim calls the real runc (`Some`), or unchanged because
    /// it already does (`None`: no options, so the shim runs `runc` from containerd's PATH).
    Direct(Option<Vec<u8>>),
    /// Options of a kind the proxy does not know: forwarded as they are, so a configured
    /// `flox-runc` (`BinaryName`) does the flox work itself, as on containerd 1.6.
    Unknown,
}

/// Points a `CreateTaskRequest`'s runc options at `runc` (whatever `BinaryName` said: the
/// `flox-runc` wrapper, for 1.6, or the runtime's own runc), keeping every other option.
pub fn direct_runc(create_payload: &[u8], create: &CreateTaskRequest, runc: &str) -> RuncChoice {
    let Some(options) = &create.options else { return RuncChoice::Direct(None) };
    if options.type_url.trim_start_matches("type.googleapis.com/") != RUNC_OPTIONS_TYPE {
        return RuncChoice::Unknown;
    }
    let Some(value) = set_field(&options.value, RUNC_BINARY_NAME_TAG, runc.as_bytes()) else {
        return RuncChoice::Unknown;
    };
    let any = Any { type_url: options.type_url.clone(), value }.encode_to_vec();
    match set_field(create_payload, CREATE_OPTIONS_TAG, &any) {
        Some(payload) => RuncChoice::Direct(Some(payload)),
        None => RuncChoice::Unknown,
    }
}

/// An `ExecProcessRequest` with its process spec's JSON replaced by `process_json`.
pub fn with_exec_process(exec_payload: &[u8], spec: &Any, process_json: Vec<u8>) -> Option<Vec<u8>> {
    let any = Any { type_url: spec.type_url.clone(), value: process_json }.encode_to_vec();
    set_field(exec_payload, EXEC_SPEC_TAG, &any)
}

/// `message` with every occurrence of field `tag` removed and `value` appended as that field
/// (length-delimited). None if `message` is not well-formed protobuf.
fn set_field(message: &[u8], tag: u32, value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(message.len() + value.len() + 8);
    let mut rest = message;
    while !rest.is_empty() {
        let field_start = rest;
        let key = prost::encoding::decode_varint(&mut rest).ok()?;
        let len = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut rest).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?,
            5 => 4,
            _ => return None, // groups: not used by these messages
        };
        rest = rest.get(len..)?;
        if key >> 3 != u64::from(tag) {
            out.extend_from_slice(&field_start[..field_start.len() - rest.len()]);
        }
    }
    prost::encoding::encode_varint(u64::from(tag) << 3 | 2, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CreateTaskRequest with fields the proxy does not decode (rootfs, terminal, stdio).
    #[derive(Clone, PartialEq, Message)]
    struct FullCreate {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        bundle: String,
        #[prost(bytes = "vec", repeated, tag = "3")]
        rootfs: Vec<Vec<u8>>,
        #[prost(bool, tag = "4")]
        terminal: bool,
        #[prost(string, tag = "6")]
        stdout: String,
        #[prost(message, optional, tag = "10")]
        options: Option<Any>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct RuncOptions {
        #[prost(string, tag = "6")]
        binary_name: String,
    }

    /// The runc options with more than the binary.
    #[derive(Clone, PartialEq, Message)]
    struct FullOptions {
        #[prost(bool, tag = "1")]
        no_pivot_root: bool,
        #[prost(uint32, tag = "4")]
        io_uid: u32,
        #[prost(string, tag = "6")]
        binary_name: String,
        #[prost(string, tag = "7")]
        root: String,
        #[prost(bool, tag = "9")]
        systemd_cgroup: bool,
    }

    fn create_with(options: Option<Any>) -> FullCreate {
        FullCreate {
            id: "c1".into(),
            bundle: "/run/b/c1".into(),
            rootfs: vec![b"overlay".to_vec()],
            terminal: true,
            stdout: "fifo".into(),
            options,
        }
    }

    fn runc_options(binary: &str) -> Any {
        let opts = FullOptions {
            no_pivot_root: true,
            io_uid: 7,
            binary_name: binary.into(),
            root: "/run/runc".into(),
            systemd_cgroup: true,
        };
        Any { type_url: RUNC_OPTIONS_TYPE.into(), value: opts.encode_to_vec() }
    }

    #[test]
    fn the_runc_binary_is_replaced_and_every_other_field_kept() {
        let full = create_with(Some(runc_options("/usr/local/bin/flox-runc")));
        let bytes = full.encode_to_vec();
        let create = CreateTaskRequest::decode(&bytes[..]).unwrap();
        assert_eq!((create.id.as_str(), create.bundle.as_str()), ("c1", "/run/b/c1"));
        let RuncChoice::Direct(Some(out)) = direct_runc(&bytes, &create, "/usr/sbin/runc") else { panic!() };
        let back = FullCreate::decode(&out[..]).unwrap();
        let opts = FullOptions::decode(&back.options.as_ref().unwrap().value[..]).unwrap();
        assert_eq!(opts.binary_name, "/usr/sbin/runc");
        assert_eq!(
            FullOptions { binary_name: "x".into(), ..opts },
            FullOptions { binary_name: "x".into(), ..FullOptions::decode(&runc_options("x").value[..]).unwrap() }
        );
        assert_eq!(FullCreate { options: None, ..back }, create_with(None));
    }

    #[test]
    fn options_without_a_binary_get_one_and_no_options_stay_none() {
        let mut any = runc_options("");
        any.type_url = format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}");
        let bytes = create_with(Some(any)).encode_to_vec();
        let create = CreateTaskRequest::decode(&bytes[..]).unwrap();
        let RuncChoice::Direct(Some(out)) = direct_runc(&bytes, &create, "/usr/sbin/runc") else { panic!() };
        let back = CreateTaskRequest::decode(&out[..]).unwrap();
        assert_eq!(RuncOptions::decode(&back.options.unwrap().value[..]).unwrap().binary_name, "/usr/sbin/runc");

        let bytes = create_with(None).encode_to_vec();
        let create = CreateTaskRequest::decode(&bytes[..]).unwrap();
        assert_eq!(direct_runc(&bytes, &create, "/usr/sbin/runc"), RuncChoice::Direct(None));
    }

    #[test]
    fn unknown_options_are_left_to_a_configured_wrapper() {
        let any = Any { type_url: "example.com/Other".into(), value: vec![1, 2, 3] };
        let bytes = create_with(Some(any)).encode_to_vec();
        let create = CreateTaskRequest::decode(&bytes[..]).unwrap();
        assert_eq!(direct_runc(&bytes, &create, "/usr/sbin/runc"), RuncChoice::Unknown);
        // Runc options that are not protobuf.
        let any = Any { type_url: RUNC_OPTIONS_TYPE.into(), value: vec![0x0f] };
        let bytes = create_with(Some(any)).encode_to_vec();
        let create = CreateTaskRequest::decode(&bytes[..]).unwrap();
        assert_eq!(direct_runc(&bytes, &create, "/usr/sbin/runc"), RuncChoice::Unknown);
    }

    #[test]
    fn an_exec_keeps_its_stdio_and_gets_the_new_process() {
        #[derive(Clone, PartialEq, Message)]
        struct FullExec {
            #[prost(string, tag = "1")]
            id: String,
            #[prost(string, tag = "2")]
            exec_id: String,
            #[prost(bool, tag = "3")]
            terminal: bool,
            #[prost(string, tag = "5")]
            stdout: String,
            #[prost(message, optional, tag = "7")]
            spec: Option<Any>,
        }
        let spec =
            Any { type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(), value: b"{}".to_vec() };
        let full = FullExec {
            id: "c1".into(),
            exec_id: "e1".into(),
            terminal: true,
            stdout: "f".into(),
            spec: Some(spec.clone()),
        };
        let out = with_exec_process(&full.encode_to_vec(), &spec, br#"{"args":["x"]}"#.to_vec()).unwrap();
        let back = FullExec::decode(&out[..]).unwrap();
        assert_eq!(back.spec.as_ref().unwrap().value, br#"{"args":["x"]}"#);
        assert_eq!(back.spec.as_ref().unwrap().type_url, spec.type_url);
        assert_eq!(FullExec { spec: None, ..back }, FullExec { spec: None, ..full });
    }

    #[test]
    fn only_the_task_service_methods_are_acted_on() {
        assert_eq!(Method::of("containerd.task.v2.Task", "Create"), Some(Method::Create));
        assert_eq!(Method::of("containerd.task.v3.Task", "Exec"), Some(Method::Exec));
        assert_eq!(Method::of("containerd.task.v3.Task", "Delete"), Some(Method::Delete));
        assert_eq!(Method::of("containerd.task.v2.Task", "Start"), None);
        assert_eq!(Method::of("containerd.events.v1.Events", "Create"), None);
        assert!(set_field(&[0x0b], 1, b"x").is_none(), "a group is refused");
        assert!(set_field(&[0x12, 0x05, b'a'], 1, b"x").is_none(), "a cut field is refused");
    }
}
