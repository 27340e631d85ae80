//! The network edge of resolve: what the hub's floxmeta says, in-process over git smart HTTP.
//!
//! One bare repository per owner (`<git_url>/<owner>/floxmeta`), one branch per environment.
//! [`Remote`] is the small trait the resolve step talks to; [`GitRemote`] implements it with gix
//! (protocol v2 `ls-refs`, a depth-1 fetch of one branch) over [`super::http::HubHttp`]. Every
//! call has the config's hub timeout as its deadline and a clean environment: no git config, no
//! credential helpers, no proxy variables. The token travels only in the `Authorization` header
//! (Basic `oauth:<token>`, as the Flox CLI sends it) and never in a URL, a config, a log or an
//! error.
//!
//! Known gap: over protocol v0 (what the hub speaks to a caller who has hidden branches) the
//! depth-1 fetch brings the branch's whole history: gix sends `deepen 1` (seen in the request
//! body), yet the hub's v0 upload-pack answers with an empty shallow section and every commit.
//! The files read are the same, only more objects land in the cache. Over v2 it is one commit.
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine;
use gix::protocol::transport::client::blocking_io::http::Transport;
use gix::protocol::transport::Protocol;
use imageless_core::token::Token;

use super::http::{FailureSlot, HttpFailure, HubHttp};
use super::repo::{self, RepoError};

/// Derives the git base URL from a hub URL the way flox does (`Floxhub::new`):
/// `https://hub[.x].flox.dev` → `https://api[.x].flox.dev/git`, anything else → `<hub>/git`.
pub fn git_url_for_hub(hub_url: &str) -> String {
    let trimmed = hub_url.trim_end_matches('/');
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let host = rest.split_once('/').map_or(rest, |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        let hosted = labels.len() >= 3 && labels[0] == "hub" && labels[labels.len() - 2..] == ["flox", "dev"];
        if hosted {
            let api_host = std::iter::once("api").chain(labels[1..].iter().copied()).collect::<Vec<_>>().join(".");
            return format!("{scheme}://{api_host}/git");
        }
    }
    format!("{trimmed}/git")
}

/// What the hub (or the way to it) said no to.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("flox: environment {env} not found on {hub} (generation files are read from {hub}/{owner}/floxmeta, branch {name}){hint}")]
    EnvironmentNotFound { env: String, owner: String, name: String, hub: String, hint: &'static str },
    #[error("flox: owner {owner:?} not found on {hub}{hint}")]
    OwnerNotFound { owner: String, hub: String, hint: &'static str },
    #[error("flox: {hub} rejected the FloxHub token in secret floxhub-token (invalid, expired or revoked); create a new one with `flox auth token` and update the secret")]
    TokenRejected { hub: String },
    #[error("flox: environment {env} on {hub} needs a FloxHub token: mount a secret with key floxhub-token at /var/run/secrets/flox.dev")]
    TokenRequired { env: String, hub: String },
    #[error("flox: hub {hub} answered HTTP {status} for {env}; check the hub or try again later")]
    Server { env: String, hub: String, status: u16 },
    #[error("flox: hub {hub} is unreachable: {reason}")]
    Unreachable {
        hub: String,
        reason: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("flox: hub {hub} gave an answer for {env} that is not a git floxmeta repository: {source}")]
    Protocol {
        env: String,
        hub: String,
        #[source]
        source: gix::Error,
    },
    #[error("flox: fetching {env} from {hub} into the floxmeta cache failed: {source}")]
    Fetch {
        env: String,
        hub: String,
        #[source]
        source: gix::Error,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl RemoteError {
    /// Whether the hub could not be asked at all (then a cached answer may stand in).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. })
    }
}

/// The deadline ran out before a request was sent.
#[derive(Debug, thiserror::Error)]
#[error("the operation's deadline passed")]
struct DeadlinePassed;

const PRIVATE_HINT: &str =
    "; if it is private, mount a FloxHub token secret (key floxhub-token) at /var/run/secrets/flox.dev";

/// The hub's floxmeta branches, as resolve needs them.
pub trait Remote {
    /// The base git URL (for messages and records).
    fn url(&self) -> &str;
    /// The commit the hub has for `owner/name`'s branch, asking with `token`.
    fn remote_head(&self, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError>;
    /// Fetches the branch (depth 1) into the owner's bare cache `repo` (created if missing) and
    /// returns the commit it now points at.
    fn fetch(&self, repo: &Path, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError>;
}

/// [`Remote`] over git smart HTTP, in-process with gix.
pub struct GitRemote {
    git_url: String,
    timeout: Duration,
}

impl GitRemote {
    pub fn new(git_url: impl Into<String>, timeout: Duration) -> GitRemote {
        GitRemote { git_url: git_url.into().trim_end_matches('/').to_string(), timeout }
    }

    fn repo_url(&self, owner: &str) -> String {
        format!("{}/{}/floxmeta", self.git_url, owner)
    }

    /// A transport for one operation against `owner`'s repository, and where it leaves failures.
    fn transport(&self, owner: &str, token: Option<&Token>) -> Result<(Transport<HubHttp>, FailureSlot), RemoteError> {
        // Like the Flox CLI: user `oauth`, the token as password — an empty one when logged
        // out, which still reads public environments of owners that also have private ones.
        let secret = token.map(Token::expose).unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("oauth:{secret}"));
        let header =
            reqwest::header::HeaderValue::try_from(format!("Basic {basic}")).map_err(|e| RemoteError::Unreachable {
                hub: self.git_url.clone(),
                reason: "bad token characters".into(),
                source: e.into(),
            })?;
        let failure = FailureSlot::default();
        let http = HubHttp::new(header, self.timeout, failure.clone()).map_err(|e| RemoteError::Unreachable {
            hub: self.git_url.clone(),
            reason: "cannot set up an HTTP client".into(),
            source: e.into(),
        })?;
        let url = gix::url::parse(gix::bstr::BStr::new(self.repo_url(owner).as_bytes())).map_err(|e| {
            RemoteError::Unreachable {
                hub: self.git_url.clone(),
                reason: "not a valid git URL".into(),
                source: e.into(),
            }
        })?;
        let transport =
            gix::protocol::transport::client::blocking_io::http::connect_http(http, url, Protocol::V2, false);
        Ok((transport, failure))
    }

    fn not_found(&self, owner: &str, name: &str, token: Option<&Token>) -> RemoteError {
        RemoteError::EnvironmentNotFound {
            env: format!("{owner}/{name}"),
            owner: owner.into(),
            name: name.into(),
            hub: self.git_url.clone(),
            hint: if token.is_none() { PRIVATE_HINT } else { "" },
        }
    }

    /// What went wrong, from what the hub answered (recorded by the transport), not from text.
    fn classify(
        &self,
        owner: &str,
        name: &str,
        token: Option<&Token>,
        failure: &FailureSlot,
        source: gix::Error,
        during_fetch: bool,
    ) -> RemoteError {
        let hub = self.git_url.clone();
        let env = format!("{owner}/{name}");
        let failure = failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let unreachable = |reason: String, source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Unreachable {
            hub: hub.clone(),
            reason,
            source,
        };
        match failure {
            Some(HttpFailure::Status { status: 401 | 403, .. }) => match token {
                Some(_) => RemoteError::TokenRejected { hub },
                None => RemoteError::TokenRequired { env, hub },
            },
            // The repository URL itself is unknown: the owner has no floxmeta.
            Some(HttpFailure::Status { status: 404, post: false }) => RemoteError::OwnerNotFound {
                owner: owner.into(),
                hub,
                hint: if token.is_none() { PRIVATE_HINT } else { "" },
            },
            Some(HttpFailure::Status { status: 404, post: true }) => self.not_found(owner, name, token),
            Some(HttpFailure::Status { status, .. }) => RemoteError::Server { env, hub, status },
            Some(HttpFailure::Transport(e)) => {
                let reason = if e.is_timeout() {
                    format!("no answer within {}s", self.timeout.as_secs())
                } else if e.is_connect() {
                    "cannot connect".into()
                } else {
                    "the request failed".into()
                };
                unreachable(reason, e.into())
            }
            Some(HttpFailure::Broken(e)) => unreachable("the answer broke off".into(), e.into()),
            Some(HttpFailure::DeadlinePassed) => {
                unreachable(format!("no answer within {}s", self.timeout.as_secs()), DeadlinePassed.into())
            }
            None if during_fetch => RemoteError::Fetch { env, hub, source },
            None => RemoteError::Protocol { env, hub, source },
        }
    }
}

fn branch_refspec(name: &str) -> String {
    format!("+refs/heads/{name}:refs/heads/{name}")
}

impl Remote for GitRemote {
    fn url(&self) -> &str {
        &self.git_url
    }

    fn remote_head(&self, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError> {
        let (mut transport, failure) = self.transport(owner, token)?;
        let classify = |e: gix::Error| self.classify(owner, name, token, &failure, e, false);
        let refspec = gix::refspec::parse(branch_refspec(name).as_str().into(), gix::refspec::parse::Operation::Fetch)
            .map_err(|e| classify(gix::Error::from_error(e)))?
            .to_owned();
        let mut progress = gix::progress::Discard;
        // No credential helpers: the header is already on every request.
        let no_helpers = |_| Ok(None);
        let mut handshake = gix::protocol::handshake(
            &mut transport,
            gix::protocol::transport::Service::UploadPack,
            no_helpers,
            Vec::new(),
            &mut progress,
        )
        .map_err(classify)?;
        let context =
            gix::protocol::fetch::refmap::init::Context { fetch_refspecs: vec![refspec], extra_refspecs: vec![] };
        let user_agent = ("agent", Some(concat!("imageless/", env!("CARGO_PKG_VERSION")).to_string()));
        let ref_map = handshake
            .prepare_lsrefs_or_extract_refmap(user_agent, true, context)
            .map_err(classify)?
            .fetch_blocking(&mut progress, &mut transport, false)
            .map_err(classify)?;
        let wanted = format!("refs/heads/{name}");
        let head = ref_map.remote_refs.iter().find_map(|r| {
            let (full, target, peeled) = r.unpack();
            (full == wanted.as_bytes()).then(|| peeled.or(target).map(|id| id.to_string())).flatten()
        });
        head.ok_or_else(|| self.not_found(owner, name, token))
    }

    fn fetch(&self, repo: &Path, owner: &str, name: &str, token: Option<&Token>) -> Result<String, RemoteError> {
        let local = repo::open_or_init(repo)?;
        let (transport, failure) = self.transport(owner, token)?;
        let classify = |e: gix::Error| self.classify(owner, name, token, &failure, e, true);
        let remote = local
            .remote_at(self.repo_url(owner).as_str())
            .map_err(classify)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(Some(branch_refspec(name).as_str()), gix::remote::Direction::Fetch)
            .map_err(classify)?;
        let prepare = remote
            .to_connection_with_transport(transport)
            .with_credentials(|_| Ok(None))
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(classify)?;
        if prepare.ref_map().mappings.is_empty() {
            return Err(self.not_found(owner, name, token));
        }
        let depth = NonZeroU32::new(1).expect("1 is not 0");
        prepare
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth))
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(classify)?;
        repo::branch_head(repo, name)?.ok_or_else(|| self.not_found(owner, name, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_url_like_flox() {
        assert_eq!(git_url_for_hub("https://hub.flox.dev"), "https://api.flox.dev/git");
        assert_eq!(git_url_for_hub("https://hub.flox.dev/"), "https://api.flox.dev/git");
        assert_eq!(git_url_for_hub("https://hub.staging.flox.dev"), "https://api.staging.flox.dev/git");
        assert_eq!(git_url_for_hub("https://nothub.flox.dev"), "https://nothub.flox.dev/git");
        assert_eq!(git_url_for_hub("https://hub.flox.example.com"), "https://hub.flox.example.com/git");
        assert_eq!(git_url_for_hub("https://onprem.example.internal/"), "https://onprem.example.internal/git");
        assert_eq!(git_url_for_hub("https://host.internal/floxhub/"), "https://host.internal/floxhub/git");
        assert_eq!(git_url_for_hub("http://127.0.0.1:8080"), "http://127.0.0.1:8080/git");
    }
}
