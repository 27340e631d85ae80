//! Floxmeta repositories over git's smart HTTP protocol, served by the real `git http-backend`
//! through CGI. The hub decides who may see which branch; git does the protocol.
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::ReaderStream;

use crate::error::HubServerError;
use crate::names::validate_owner;

/// What a request below `/git/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRoute {
    /// `GET <owner>/floxmeta/info/refs?service=git-upload-pack`
    AdvertiseUploadPack { owner: String },
    /// `POST <owner>/floxmeta/git-upload-pack`
    UploadPack { owner: String },
    /// Any receive-pack request: the hub is read-only over HTTP.
    ReceivePack { owner: String },
    /// Dumb-HTTP file access (`objects/...`, `HEAD`, plain `info/refs`): refused, since it would
    /// bypass per-branch visibility.
    Dumb { owner: String },
    /// Not a floxmeta repository path.
    NotFound,
}

/// Classifies the part of the path after `/git/`, plus the query string.
pub fn route(rest: &str, query: &str) -> GitRoute {
    let mut parts = rest.splitn(3, '/');
    let (Some(owner), Some(repo), tail) = (parts.next(), parts.next(), parts.next().unwrap_or("")) else {
        return GitRoute::NotFound;
    };
    if validate_owner(owner).is_err() || repo != "floxmeta" {
        return GitRoute::NotFound;
    }
    let owner = owner.to_owned();
    let service = query.split('&').find_map(|kv| kv.strip_prefix("service="));
    match (tail, service) {
        ("info/refs", Some("git-upload-pack")) => GitRoute::AdvertiseUploadPack { owner },
        ("info/refs", Some("git-receive-pack")) | ("git-receive-pack", _) => GitRoute::ReceivePack { owner },
        ("git-upload-pack", _) => GitRoute::UploadPack { owner },
        _ => GitRoute::Dumb { owner },
    }
}

/// The git configuration handed to `git http-backend` (and inherited by `git upload-pack`).
/// Hidden branches are left out of the ref advertisement, both protocol v0/v1 and v2 `ls-refs`.
pub fn backend_config(hidden_branches: &[String]) -> Vec<(String, String)> {
    let mut config = vec![
        ("http.receivepack".to_owned(), "false".to_owned()),
        ("http.getanyfile".to_owned(), "false".to_owned()),
        ("http.uploadpack".to_owned(), "true".to_owned()),
        ("safe.directory".to_owned(), "*".to_owned()),
        // The defaults, stated so that no host config can widen what a v0 fetch may ask for.
        ("uploadpack.allowTipSHA1InWant".to_owned(), "false".to_owned()),
        ("uploadpack.allowReachableSHA1InWant".to_owned(), "false".to_owned()),
        ("uploadpack.allowAnySHA1InWant".to_owned(), "false".to_owned()),
    ];
    for name in hidden_branches {
        config.push(("uploadpack.hideRefs".to_owned(), format!("refs/heads/{name}")));
    }
    config
}

/// The `Git-Protocol` value passed on to git. Protocol v2 hides refs from `ls-refs` but lets a
/// client fetch any object by id, so a caller with hidden branches is held to protocol v0,
/// where upload-pack refuses wants that no visible ref reaches (verified in the tests).
pub fn effective_git_protocol<'a>(header: Option<&'a str>, hidden_branches: &[String]) -> Option<&'a str> {
    if hidden_branches.is_empty() {
        header
    } else {
        None
    }
}

/// PIDs of running `git http-backend` children, so shutdown can end any that outlive it.
#[derive(Debug, Clone, Default)]
pub struct ChildRegistry(Arc<Mutex<HashSet<u32>>>);

impl ChildRegistry {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    }
    fn remove(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    }
    /// Sends SIGKILL to every child still running; returns how many there were.
    pub fn kill_all(&self) -> usize {
        let pids: Vec<u32> = self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        for pid in &pids {
            // A PID we spawned and have not reaped yet (it stays in the registry until wait()
            // returned), so it cannot have been reused.
            if let Some(pid) = i32::try_from(*pid).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        pids.len()
    }
}

/// The CGI parameters of one request.
#[derive(Debug, Clone)]
pub struct CgiRequest<'a> {
    pub method: &'a str,
    /// `/<owner>/floxmeta/...`, relative to GIT_PROJECT_ROOT.
    pub path_info: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<u64>,
    pub content_encoding: Option<&'a str>,
    pub git_protocol: Option<&'a str>,
    pub remote_user: Option<&'a str>,
    pub hidden_branches: &'a [String],
}

/// Status and headers parsed from the CGI output, and the body still streaming from the child.
pub struct CgiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// The most CGI header bytes read before the child is considered broken.
const MAX_CGI_HEAD: usize = 64 * 1024;

/// Runs `git http-backend` for one request: streams `body` into its stdin while its stdout is
/// read, and returns once the CGI head is parsed; the response body then streams from the
/// child's stdout. The child is reaped (and dropped from `children`) by a task of its own; a
/// client that goes away drops stdout, so the child gets EPIPE and ends.
pub async fn run_cgi(
    project_root: &Path,
    req: &CgiRequest<'_>,
    body: Body,
    children: &ChildRegistry,
) -> Result<CgiResponse, HubServerError> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", req.method)
        .env("PATH_INFO", req.path_info)
        .env("QUERY_STRING", req.query)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let optional = [
        ("CONTENT_TYPE", req.content_type),
        ("HTTP_CONTENT_ENCODING", req.content_encoding),
        ("GIT_PROTOCOL", effective_git_protocol(req.git_protocol, req.hidden_branches)),
        ("REMOTE_USER", req.remote_user),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    if let Some(len) = req.content_length {
        // Without CONTENT_LENGTH (chunked request) http-backend reads until EOF.
        cmd.env("CONTENT_LENGTH", len.to_string());
    }
    let config = backend_config(req.hidden_branches);
    cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }

    let mut child =
        cmd.spawn().map_err(|source| HubServerError::Spawn { program: "git http-backend".into(), source })?;
    let pid = child.id().expect("a child not yet waited for has a pid");
    children.add(pid);
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let stdin = child.stdin.take().expect("stdin piped");

    let registry = children.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        registry.remove(pid);
        match status {
            Ok(s) => tracing::debug!("git http-backend exited: {s}"),
            Err(e) => tracing::debug!("waiting for git http-backend failed: {e}"),
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!(target: "imageless_hub::git", "git http-backend: {line}");
        }
    });
    tokio::spawn(feed_stdin(body, stdin));

    let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
    let head = read_cgi_head(&mut stdout).await.and_then(|bytes| parse_cgi_head(&mut std::io::Cursor::new(bytes)));
    match head {
        Ok((status, headers)) => {
            Ok(CgiResponse { status, headers, body: Body::from_stream(ReaderStream::new(stdout)) })
        }
        Err(message) => {
            // Dropping stdout ends a child that is still writing; the reaper task collects it.
            Err(HubServerError::CommandFailed {
                command: "git http-backend".into(),
                status: "no valid CGI head".into(),
                stderr: message,
            })
        }
    }
}

/// Copies the request body into the child's stdin, then closes it. A child that fails early
/// closes its stdin; the copy error then is not the interesting one.
async fn feed_stdin(body: Body, mut stdin: tokio::process::ChildStdin) {
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        if stdin.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = stdin.shutdown().await;
}

/// The CGI head's bytes up to and including the blank line (bounded by [`MAX_CGI_HEAD`]).
async fn read_cgi_head(stdout: &mut (impl AsyncBufRead + Unpin)) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = stdout.read_until(b'\n', &mut head).await.map_err(|e| format!("reading CGI headers: {e}"))?;
        if n == 0 {
            return Err("git http-backend ended without output".into());
        }
        if head.len() > MAX_CGI_HEAD {
            return Err(format!("CGI headers longer than {MAX_CGI_HEAD} bytes"));
        }
        let line = &head[before..];
        if line == b"\n" || line == b"\r\n" {
            return Ok(head);
        }
    }
}

/// Reads CGI response headers up to the blank line; `Status:` becomes the HTTP status.
pub fn parse_cgi_head(reader: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), String> {
    let mut status = 200;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| format!("reading CGI headers: {e}"))?;
        if n == 0 {
            return Err("CGI output ended before the end of its headers".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| format!("bad CGI status {value:?}"))?;
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn routes() {
        let o = || "alice".to_string();
        assert_eq!(
            route("alice/floxmeta/info/refs", "service=git-upload-pack"),
            GitRoute::AdvertiseUploadPack { owner: o() }
        );
        assert_eq!(route("alice/floxmeta/git-upload-pack", ""), GitRoute::UploadPack { owner: o() });
        assert_eq!(route("alice/floxmeta/info/refs", "service=git-receive-pack"), GitRoute::ReceivePack { owner: o() });
        assert_eq!(route("alice/floxmeta/git-receive-pack", ""), GitRoute::ReceivePack { owner: o() });
        assert_eq!(route("alice/floxmeta/info/refs", ""), GitRoute::Dumb { owner: o() });
        assert_eq!(route("alice/floxmeta/objects/ab/cdef", ""), GitRoute::Dumb { owner: o() });
        assert_eq!(route("alice/other/info/refs", ""), GitRoute::NotFound);
        assert_eq!(route("../floxmeta/info/refs", ""), GitRoute::NotFound);
        assert_eq!(route("alice", ""), GitRoute::NotFound);
    }

    #[test]
    fn cgi_head() {
        let mut input = std::io::Cursor::new(b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nbody".to_vec());
        let (status, headers) = parse_cgi_head(&mut input).unwrap();
        assert_eq!(status, 403);
        assert_eq!(headers, vec![("Content-Type".to_string(), "text/plain".to_string())]);
        let mut rest = String::new();
        input.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "body");
        assert_eq!(parse_cgi_head(&mut std::io::Cursor::new(b"Expires: x\n\n".to_vec())).unwrap().0, 200);
        assert!(parse_cgi_head(&mut std::io::Cursor::new(b"Content-Type: x\n".to_vec())).is_err());
    }

    #[test]
    fn hidden_branches_become_hide_refs() {
        let c = backend_config(&["secret".into()]);
        assert!(c.contains(&("uploadpack.hideRefs".into(), "refs/heads/secret".into())));
        assert!(c.contains(&("http.receivepack".into(), "false".into())));
        assert_eq!(effective_git_protocol(Some("version=2"), &[]), Some("version=2"));
        assert_eq!(effective_git_protocol(Some("version=2"), &["secret".into()]), None);
    }
}
