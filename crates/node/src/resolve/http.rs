//! git smart HTTP for gix over the node's own reqwest (rustls with ring, no OpenSSL).
//!
//! gix-transport drives the git protocol and asks an [`Http`] implementation for plain GETs and
//! POSTs. gix's own reqwest backend pulls a second reqwest (0.13, TLS via aws-lc) and sends
//! credentials only after a 401 and never over plain http; this one shares the workspace's
//! reqwest, sends the hub's `Authorization` header on every request (as `git -c
//! http.extraHeader` did, so an empty token still reads public environments of owners that also
//! have private ones), ends every request at the operation's deadline, follows no redirect, reads
//! no proxy variables, and remembers why a request failed so that the caller can say precisely
//! what the hub answered instead of parsing error texts.
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gix_transport::client::blocking_io::http::{GetResponse, Http, PostBodyDataKind, PostResponse};

/// The most a request body (the fetch negotiation: a few want/deepen lines) may hold.
const MAX_POST_BODY: usize = 1 << 20;

/// Why the last failed request failed, as the hub or the network said it.
#[derive(Debug)]
pub enum HttpFailure {
    /// The hub answered with a status other than 2xx, to a GET (`info/refs`) or a POST.
    Status { status: u16, post: bool },
    /// No answer: connect, TLS, timeout or a broken connection.
    Transport(reqwest::Error),
    /// The answer broke off while its body was read (a timeout, a reset).
    Broken(std::io::Error),
    /// The operation's deadline had passed before the request was sent.
    DeadlinePassed,
}

/// Where the transport leaves the failure for the caller (shared with the [`HubHttp`] that gix
/// owns while the operation runs).
pub type FailureSlot = Arc<Mutex<Option<HttpFailure>>>;

/// One git operation's HTTP client: every request carries `authorization` and ends by `deadline`.
pub struct HubHttp {
    client: reqwest::blocking::Client,
    authorization: reqwest::header::HeaderValue,
    deadline: Instant,
    failure: FailureSlot,
}

impl HubHttp {
    /// A client whose requests all end by `now + timeout`; `authorization` is the full
    /// `Authorization` header value (marked sensitive, so reqwest never prints it).
    pub fn new(
        mut authorization: reqwest::header::HeaderValue,
        timeout: Duration,
        failure: FailureSlot,
    ) -> Result<HubHttp, reqwest::Error> {
        authorization.set_sensitive(true);
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("imageless/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HubHttp { client, authorization, deadline: Instant::now() + timeout, failure })
    }

    fn request(&self, method: reqwest::Method, url: &str, headers: Vec<String>) -> Pending {
        let mut builder = self.client.request(method.clone(), url);
        for line in &headers {
            let Some((name, value)) = line.split_once(':') else { continue };
            // gix's own User-Agent would override ours; the hub logs ours.
            if name.eq_ignore_ascii_case("user-agent") {
                continue;
            }
            builder = builder.header(name.trim(), value.trim());
        }
        builder = builder.header(reqwest::header::AUTHORIZATION, self.authorization.clone());
        Pending {
            post: method == reqwest::Method::POST,
            builder: Some(builder),
            body: Vec::new(),
            deadline: self.deadline,
            failure: self.failure.clone(),
            outcome: None,
        }
    }
}

/// A request built but not sent yet (a POST's body is still being written), or its outcome.
struct Pending {
    post: bool,
    builder: Option<reqwest::blocking::RequestBuilder>,
    body: Vec<u8>,
    deadline: Instant,
    failure: FailureSlot,
    outcome: Option<Outcome>,
}

enum Outcome {
    Answered { headers: Option<Vec<u8>>, body: Option<reqwest::blocking::Response> },
    Failed { kind: std::io::ErrorKind, message: String },
}

impl Pending {
    /// Sends the request once; later calls return what the first one got.
    fn send(&mut self) -> &mut Outcome {
        if self.outcome.is_none() {
            let outcome = match self.builder.take() {
                Some(builder) => self.execute(builder),
                None => Outcome::Failed { kind: std::io::ErrorKind::Other, message: "request already sent".into() },
            };
            self.outcome = Some(outcome);
        }
        self.outcome.as_mut().expect("set above")
    }

    fn execute(&mut self, mut builder: reqwest::blocking::RequestBuilder) -> Outcome {
        let slot = self.failure.clone();
        let record = move |failure: HttpFailure| {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure);
        };
        let Some(left) = self.deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            record(HttpFailure::DeadlinePassed);
            return Outcome::Failed { kind: std::io::ErrorKind::TimedOut, message: "deadline passed".into() };
        };
        builder = builder.timeout(left);
        if !self.body.is_empty() {
            builder = builder.body(std::mem::take(&mut self.body));
        }
        match builder.send() {
            Ok(response) if response.status().is_success() => {
                let mut headers = Vec::new();
                for (name, value) in response.headers() {
                    headers.extend_from_slice(name.as_str().as_bytes());
                    headers.push(b':');
                    headers.extend_from_slice(value.as_bytes());
                    headers.push(b'\n');
                }
                Outcome::Answered { headers: Some(headers), body: Some(response) }
            }
            Ok(response) => {
                let status = response.status().as_u16();
                record(HttpFailure::Status { status, post: self.post });
                // gix-transport's contract: 401 is PermissionDenied, other statuses Other.
                let kind = if status == 401 { std::io::ErrorKind::PermissionDenied } else { std::io::ErrorKind::Other };
                Outcome::Failed { kind, message: format!("HTTP {status}") }
            }
            Err(e) => {
                let message = if e.is_timeout() { "no answer in time" } else { "no answer" };
                record(HttpFailure::Transport(e));
                Outcome::Failed { kind: std::io::ErrorKind::ConnectionAborted, message: message.into() }
            }
        }
    }
}

type Shared = Arc<Mutex<Pending>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Pending> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The request body: collected in memory, sent when the response is first read.
pub struct PostBody(Shared);

impl Write for PostBody {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock(&self.0);
        if pending.body.len() + buf.len() > MAX_POST_BODY {
            return Err(std::io::Error::other("git request body larger than 1 MiB"));
        }
        pending.body.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The response headers, one `name:value` line each; reading them sends the request.
pub struct Headers {
    shared: Shared,
    lines: Option<Cursor<Vec<u8>>>,
}

/// The response body, streamed; reading it sends the request.
pub struct Body {
    shared: Shared,
    body: Option<BufReader<reqwest::blocking::Response>>,
}

fn failed(outcome: &Outcome) -> Option<std::io::Error> {
    match outcome {
        Outcome::Failed { kind, message } => Some(std::io::Error::new(*kind, message.clone())),
        Outcome::Answered { .. } => None,
    }
}

impl Headers {
    fn lines(&mut self) -> std::io::Result<&mut Cursor<Vec<u8>>> {
        if self.lines.is_none() {
            let mut pending = lock(&self.shared);
            let outcome = pending.send();
            if let Some(e) = failed(outcome) {
                return Err(e);
            }
            let Outcome::Answered { headers, .. } = outcome else { unreachable!("checked above") };
            self.lines = Some(Cursor::new(headers.take().unwrap_or_default()));
        }
        Ok(self.lines.as_mut().expect("set above"))
    }
}

impl Read for Headers {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.lines()?.read(buf)
    }
}

impl BufRead for Headers {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.lines()?.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Some(lines) = self.lines.as_mut() {
            lines.consume(amt);
        }
    }
}

impl Body {
    fn reader(&mut self) -> std::io::Result<&mut BufReader<reqwest::blocking::Response>> {
        if self.body.is_none() {
            let mut pending = lock(&self.shared);
            let outcome = pending.send();
            if let Some(e) = failed(outcome) {
                return Err(e);
            }
            let Outcome::Answered { body, .. } = outcome else { unreachable!("checked above") };
            let response = body.take().ok_or_else(|| std::io::Error::other("response body already taken"))?;
            self.body = Some(BufReader::with_capacity(64 * 1024, response));
        }
        Ok(self.body.as_mut().expect("set above"))
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let failure = lock(&self.shared).failure.clone();
        self.reader()?.read(buf).map_err(|e| broken(&failure, e))
    }
}

impl BufRead for Body {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let failure = lock(&self.shared).failure.clone();
        self.reader()?.fill_buf().map_err(|e| broken(&failure, e))
    }

    fn consume(&mut self, amt: usize) {
        if let Some(body) = self.body.as_mut() {
            body.consume(amt);
        }
    }
}

/// A body that breaks off mid-way is the network's failure, not the hub's answer: the cause
/// stays in the slot for the caller, gix gets an error of the same kind.
fn broken(failure: &FailureSlot, e: std::io::Error) -> std::io::Error {
    let kind = e.kind();
    failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(HttpFailure::Broken(e));
    std::io::Error::new(kind, "the hub's answer broke off")
}

fn to_gix(e: std::io::Error) -> gix::error::Error {
    gix::error::Error::from_error(e)
}

impl Http for HubHttp {
    type Headers = Headers;
    type ResponseBody = Body;
    type PostBody = PostBody;

    fn get(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::error::Result<GetResponse<Headers, Body>> {
        let headers = headers.into_iter().map(|h| h.as_ref().to_owned()).collect();
        let shared = Arc::new(Mutex::new(self.request(reqwest::Method::GET, url, headers)));
        // A GET has no body to wait for: send now, so a failure surfaces at the call.
        if let Some(e) = failed(lock(&shared).send()) {
            return Err(to_gix(e));
        }
        Ok(GetResponse { headers: Headers { shared: shared.clone(), lines: None }, body: Body { shared, body: None } })
    }

    fn post(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        _body: PostBodyDataKind,
    ) -> gix::error::Result<PostResponse<Headers, Body, PostBody>> {
        let headers = headers.into_iter().map(|h| h.as_ref().to_owned()).collect();
        let shared = Arc::new(Mutex::new(self.request(reqwest::Method::POST, url, headers)));
        Ok(PostResponse {
            post_body: PostBody(shared.clone()),
            headers: Headers { shared: shared.clone(), lines: None },
            body: Body { shared, body: None },
        })
    }

    fn configure(&mut self, _config: &dyn std::any::Any) -> gix::error::Result<()> {
        // Nothing from git config applies: the hub's URL, auth and timeout are ours.
        Ok(())
    }
}
