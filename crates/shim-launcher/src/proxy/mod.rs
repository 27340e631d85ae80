//! The shim proxy: one long-lived process per runc shim (per pod), between containerd and the
//! stock `containerd-shim-runc-v2`. It forwards every ttrpc frame as it is, except the task
//! service's `Create`, `Exec` and `Delete`, where it does flox-runc's work in-process and
//! points the shim at the real runc. So no wrapper process starts in front of each runc call
//! (about 1 ms each, four to eight per pod), and the decision is made once per container.
//!
//! Threads, blocking I/O: per containerd connection one thread reads containerd's frames and
//! one the shim's; a `Create` runs on its own thread because a cold environment can take
//! seconds to fetch, and other calls of the pod must not wait behind it.
//!
//! The shim is a Go process, and every connection made to it costs it an accept and a
//! goroutine: the proxy connects to it only for a connection that sends a frame (a liveness
//! probe of the proxy costs the shim nothing), and learns of the shim's exit from a pidfd
//! rather than by connecting to it again and again (which, in a burst of pod starts, cost the
//! shims more CPU than the rest of the proxy's work).
mod task_api;
mod tasks;
mod ttrpc;

use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;

use task_api::Method;
use tasks::{AfterReply, Outcome, Tasks};
use ttrpc::{Frame, Request, Response};

/// How the proxy learns that its shim has exited.
pub enum ShimWatch {
    /// A pidfd of the shim's process: readable once it has exited.
    Pidfd(OwnedFd),
    /// The shim's pid is not known (its `start` found a running shim and wrote no shim.pid):
    /// look whether its socket still answers, every 2 s and for a while after a connection ends.
    Connect,
}

/// Serves containerd's connections on `listener`, each relayed to the shim at `upstream`,
/// until that shim is gone. Never returns.
pub fn serve(
    listener: UnixListener,
    socket: PathBuf,
    upstream: PathBuf,
    record: Option<PathBuf>,
    watch: ShimWatch,
) -> ! {
    // The bundle this started in is removed with its container; hold nothing there.
    let _ = std::env::set_current_dir("/");
    let tasks = Arc::new(Tasks::default());
    let gone = Arc::new(ShimGone { socket, upstream: upstream.clone(), record });
    let polling = matches!(watch, ShimWatch::Connect);
    {
        let gone = gone.clone();
        match watch {
            ShimWatch::Pidfd(pidfd) => std::thread::spawn(move || {
                wait_readable(&pidfd);
                gone.exit();
            }),
            // containerd always holds a connection to a live shim, so a relay's end notices a
            // shim's exit at once; this catches the rest (e.g. while containerd restarts).
            ShimWatch::Connect => std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                gone.exit_if_gone();
            }),
        };
    }
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let (tasks, gone) = (tasks.clone(), gone.clone());
        std::thread::spawn(move || {
            let reached_shim = match relay(client, &gone.upstream, tasks) {
                Ok(reached) => reached,
                Err(e) => {
                    tracing::debug!("connection ended: {e}");
                    true
                }
            };
            if polling && reached_shim {
                // containerd closes its connection when it shuts the shim down, a moment
                // before the shim has exited: look again for a while.
                for _ in 0..40 {
                    gone.exit_if_gone();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        });
    }
    std::process::exit(0)
}

/// Blocks until `fd` is readable (a pidfd: its process has exited) or cannot be polled.
fn wait_readable(fd: &OwnedFd) {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// The proxy's end: its shim no longer accepts connections (containerd shut it down, or it
/// died), so the proxy removes its socket and exits.
struct ShimGone {
    socket: PathBuf,
    upstream: PathBuf,
    /// The pod's record for its other containers' starts (group.rs).
    record: Option<PathBuf>,
}

impl ShimGone {
    fn exit_if_gone(&self) {
        if UnixStream::connect(&self.upstream).is_err() {
            self.exit();
        }
    }

    fn exit(&self) -> ! {
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
        let _ = std::fs::remove_file(&self.socket);
        std::process::exit(0);
    }
}

/// Replies the proxy still owes work after, by stream id.
type Pending = Arc<Mutex<HashMap<u32, AfterReply>>>;

/// Relays one containerd connection to a new connection to the shim, until either side ends.
/// The shim is connected to on the connection's first frame: a connection that sends none (a
/// liveness probe) never reaches it. Returns whether it did.
fn relay(mut client: UnixStream, upstream: &Path, tasks: Arc<Tasks>) -> std::io::Result<bool> {
    let Some(first) = ttrpc::read_frame(&mut client)? else { return Ok(false) };
    let shim = UnixStream::connect(upstream)?;
    let to_client = Arc::new(Mutex::new(client.try_clone()?));
    let to_shim = Arc::new(Mutex::new(shim.try_clone()?));
    let pending: Pending = Arc::default();
    let replies = {
        let (to_client, pending, tasks) = (to_client.clone(), pending.clone(), tasks.clone());
        let mut shim = shim.try_clone()?;
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = ttrpc::read_frame(&mut shim) {
                if frame.kind == ttrpc::TYPE_RESPONSE {
                    let then = pending.lock().expect("not poisoned").remove(&frame.stream_id);
                    if let Some(then) = then {
                        let ok = Response::decode(&frame.payload[..]).is_ok_and(|r| r.is_ok());
                        tasks.after_reply(then, ok);
                    }
                }
                if send(&to_client, &frame).is_err() {
                    break;
                }
            }
            let _ = to_client.lock().expect("not poisoned").shutdown(Shutdown::Both);
        })
    };
    let rest = std::iter::from_fn(|| ttrpc::read_frame(&mut client).transpose());
    for frame in std::iter::once(Ok(first)).chain(rest) {
        let frame = frame?;
        let method = (frame.kind == ttrpc::TYPE_REQUEST)
            .then(|| Request::decode(&frame.payload[..]).ok())
            .flatten()
            .and_then(|req| Method::of(&req.service, &req.method).map(|m| (m, req)));
        let Some((method, request)) = method else {
            send(&to_shim, &frame)?;
            continue;
        };
        let job =
            Job { frame, request, to_client: to_client.clone(), to_shim: to_shim.clone(), pending: pending.clone() };
        match method {
            Method::Create => {
                let tasks = tasks.clone();
                std::thread::spawn(move || job.run(&tasks, |payload| tasks.create(payload)));
            }
            Method::Exec => job.run(&tasks, |payload| tasks.exec(payload)),
            Method::Delete => job.run(&tasks, |payload| tasks.delete(payload)),
        }
    }
    let _ = shim.shutdown(Shutdown::Both);
    let _ = replies.join();
    // Calls still unanswered when the connection ended (containerd died or closed it): the shim
    // cancels a create whose caller is gone, so what its preparation left must go. (A delete's
    // outcome is unknown; containerd deletes again after a restart, or runs `shim delete`.)
    let unanswered: Vec<AfterReply> = pending.lock().expect("not poisoned").drain().map(|(_, then)| then).collect();
    for then in unanswered {
        if matches!(then, AfterReply::CleanupIfFailed(_)) {
            tasks.after_reply(then, false);
        }
    }
    Ok(true)
}

/// One request the proxy acts on.
struct Job {
    frame: Frame,
    request: Request,
    to_client: Arc<Mutex<UnixStream>>,
    to_shim: Arc<Mutex<UnixStream>>,
    pending: Pending,
}

impl Job {
    fn run(mut self, tasks: &Tasks, handle: impl FnOnce(Vec<u8>) -> Outcome) {
        let stream_id = self.frame.stream_id;
        match handle(std::mem::take(&mut self.request.payload)) {
            Outcome::Forward { payload, then } => {
                if then != AfterReply::Nothing {
                    self.pending.lock().expect("not poisoned").insert(stream_id, then);
                }
                self.request.payload = payload;
                self.frame.payload = self.request.encode_to_vec();
                if send(&self.to_shim, &self.frame).is_err() {
                    // The connection ended while this was being prepared (containerd died or
                    // gave up): the shim never got the call, so it failed.
                    let then = self.pending.lock().expect("not poisoned").remove(&stream_id);
                    if let Some(then) = then {
                        tasks.after_reply(then, false);
                    }
                }
            }
            Outcome::Refuse { code, message } => {
                tracing::info!("refused: {message}");
                let _ = send(&self.to_client, &Response::error_frame(stream_id, code, message));
            }
        }
    }
}

fn send(to: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    let mut stream = to.lock().expect("not poisoned");
    ttrpc::write_frame(&mut *stream, frame)?;
    stream.flush()
}
