//! FloxHub client: floxmeta over git smart HTTP, as the Flox CLI talks to FloxHub.
//!
//! One bare repository per owner (`<git_url>/<owner>/floxmeta`), one branch per environment.
//! We drive the `git` binary rather than a Rust git client: it is what Flox itself uses (so
//! auth and error behaviour match FloxHub's), it is on every distro, and gix's HTTP transport
//! would add minutes of compile and a TLS stack to every node binary. The token travels only
//! in the git child's environment as an `Authorization` header (never argv, never logs).
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use imageless_core::token::Token;

/// Derives the git base URL from a hub URL the way flox does (`Floxhub::new`):
/// `https://hub[.x].flox.dev` → `https://api[.x].flox.dev/git`, anything else → `<hub>/git`.
pub fn git_url_for_hub(hub_url: &str) -> String {
    let trimmed = hub_url.trim_end_matches('/');
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let labels: Vec<&str> = host.split('.').collect();
        let hosted = labels.len() >= 3 && labels[0] == "hub" && labels[labels.len() - 2..] == ["flox", "dev"];
        if hosted {
            let api_host = std::iter::once("api").chain(labels[1..].iter().copied()).collect::<Vec<_>>().join(".");
            return format!("{scheme}://{api_host}/git");
        }
        let _ = path;
    }
    format!("{trimmed}/git")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
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
    #[error("flox: hub {hub} is unreachable: {detail}")]
    Unreachable { hub: String, detail: String },
    #[error("flox: reading {what} from the floxmeta cache failed: {detail}")]
    Local { what: String, detail: String },
}

impl HubError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HubError::Unreachable { .. })
    }
}

const PRIVATE_HINT: &str =
    "; if it is private, mount a FloxHub token secret (key floxhub-token) at /var/run/secrets/flox.dev";

pub struct HubClient {
    git_url: String,
    timeout: Duration,
}

impl HubClient {
    pub fn new(git_url: impl Into<String>, timeout: Duration) -> HubClient {
        HubClient { git_url: git_url.into().trim_end_matches('/').to_string(), timeout }
    }

    pub fn git_url(&self) -> &str {
        &self.git_url
    }

    fn repo_url(&self, owner: &str) -> String {
        format!("{}/{}/floxmeta", self.git_url, owner)
    }

    /// The commit the hub has for the environment's branch, asking with `token`.
    pub fn remote_head(&self, owner: &str, name: &str, token: Option<&Token>) -> Result<String, HubError> {
        let url = self.repo_url(owner);
        let out = self.git(None, token, &["ls-remote", "--exit-code", &url, &format!("refs/heads/{name}")])?;
        match out.status {
            0 => out
                .stdout
                .split_whitespace()
                .next()
                .map(String::from)
                .ok_or_else(|| self.classify(owner, name, token, "ls-remote printed nothing")),
            // --exit-code: the repository answered but has no such branch.
            2 => Err(self.not_found(owner, name, token)),
            _ => Err(self.classify(owner, name, token, &out.stderr)),
        }
    }

    /// Fetches the environment's branch into the owner's bare cache repo and returns its head.
    pub fn fetch(&self, repo: &Path, owner: &str, name: &str, token: Option<&Token>) -> Result<String, HubError> {
        if !repo.join("HEAD").exists() {
            init_bare(self, repo)?;
        }
        let url = self.repo_url(owner);
        let refspec = format!("+refs/heads/{name}:refs/heads/{name}");
        let out = self.git(Some(repo), token, &["fetch", "--quiet", "--no-tags", "--depth=1", &url, &refspec])?;
        if out.status != 0 {
            return Err(self.classify(owner, name, token, &out.stderr));
        }
        let out = self.git(Some(repo), None, &["rev-parse", &format!("refs/heads/{name}")])?;
        Ok(out.stdout.trim().to_string())
    }

    fn not_found(&self, owner: &str, name: &str, token: Option<&Token>) -> HubError {
        HubError::EnvironmentNotFound {
            env: format!("{owner}/{name}"),
            owner: owner.into(),
            name: name.into(),
            hub: self.git_url.clone(),
            hint: if token.is_none() { PRIVATE_HINT } else { "" },
        }
    }

    /// Maps git's stderr to what happened, as flox classifies it (`GitCommandError`), plus
    /// the HTTP status codes git prints for the hub's answers.
    fn classify(&self, owner: &str, name: &str, token: Option<&Token>, stderr: &str) -> HubError {
        let hub = self.git_url.clone();
        let env = format!("{owner}/{name}");
        if stderr.contains("couldn't find remote ref") || stderr.contains("Remote branch") {
            return self.not_found(owner, name, token);
        }
        if stderr.contains("not found") && stderr.contains("repository") {
            let hint = if token.is_none() { PRIVATE_HINT } else { "" };
            return HubError::OwnerNotFound { owner: owner.into(), hub, hint };
        }
        if stderr.contains("Authentication failed")
            || stderr.contains("error: 401")
            || stderr.contains("could not read Username")
        {
            return match token {
                Some(_) => HubError::TokenRejected { hub },
                None => HubError::TokenRequired { env, hub },
            };
        }
        if let Some(status) =
            stderr.split("returned error: ").nth(1).and_then(|s| s.get(..3)).and_then(|s| s.parse::<u16>().ok())
        {
            return match status {
                403 => match token {
                    Some(_) => HubError::TokenRejected { hub },
                    None => HubError::TokenRequired { env, hub },
                },
                404 => self.not_found(owner, name, token),
                _ => HubError::Server { env, hub, status },
            };
        }
        HubError::Unreachable { hub, detail: last_line(stderr) }
    }

    fn git(&self, repo: Option<&Path>, token: Option<&Token>, args: &[&str]) -> Result<GitOutput, HubError> {
        let mut cmd = Command::new("git");
        if let Some(repo) = repo {
            cmd.arg("--git-dir").arg(repo);
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("HOME", "/nonexistent")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let low_speed = self.timeout.as_secs().max(1).to_string();
        let mut config = vec![
            ("http.userAgent".to_string(), format!("imageless/{}", env!("CARGO_PKG_VERSION"))),
            ("http.lowSpeedLimit".to_string(), "1".to_string()),
            ("http.lowSpeedTime".to_string(), low_speed),
            ("credential.helper".to_string(), String::new()),
        ];
        // Like the Flox CLI: user `oauth`, the token as password — an empty one when logged
        // out, which still reads public environments of owners that also have private ones.
        let secret = token.map(Token::expose).unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("oauth:{secret}"));
        config.push(("http.extraHeader".to_string(), format!("Authorization: Basic {basic}")));
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        let mut child =
            cmd.spawn().map_err(|e| HubError::Local { what: "git".into(), detail: format!("cannot run git: {e}") })?;
        let pid = child.id();
        let timeout = self.timeout;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // A hung hub must not hang pod creation: kill git after the timeout.
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                // Our own child, not yet waited for: the pid cannot have been reused.
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                return true;
            }
            false
        });
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut err_pipe = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let _ = err_pipe.read_to_string(&mut stderr);
            stderr
        });
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let status = child.wait().map_err(|e| local("git", e))?;
        let _ = done_tx.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        let mut stderr = err_reader.join().unwrap_or_default();
        if let Some(token) = token {
            // Defence in depth: git never prints headers without tracing, but scrub anyway.
            stderr = stderr.replace(token.expose(), "<redacted>");
        }
        if timed_out {
            return Err(HubError::Unreachable {
                hub: self.git_url.clone(),
                detail: format!("no answer within {}s", timeout.as_secs()),
            });
        }
        Ok(GitOutput { status: status.code().unwrap_or(-1), stdout, stderr })
    }
}

/// Creates the owner's bare cache repo under a temporary name and renames it into place, so
/// an init cut short (a full disk, a kill) never leaves a repo that looks usable but is not.
fn init_bare(client: &HubClient, repo: &Path) -> Result<(), HubError> {
    let parent = repo.parent().expect("repo has a parent");
    std::fs::create_dir_all(parent).map_err(|e| local("floxmeta cache", e))?;
    let file_name = repo.file_name().expect("repo has a name").to_string_lossy();
    let tmp = parent.join(format!(".{file_name}.init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // No templates: sample hooks are dead weight in a cache nobody commits to.
    let out = client.git(Some(&tmp), None, &["init", "--quiet", "--bare", "--template="]);
    let out = match out {
        Ok(out) if out.status == 0 => out,
        Ok(out) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(HubError::Local { what: "git init".into(), detail: out.stderr });
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    drop(out);
    // A broken leftover (no HEAD) from an older version goes; a concurrent init that won the
    // race (the rename fails because the repo exists and is not empty) is as good as ours.
    if repo.exists() && !repo.join("HEAD").exists() {
        let _ = std::fs::remove_dir_all(repo);
    }
    if std::fs::rename(&tmp, repo).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !repo.join("HEAD").exists() {
            return Err(HubError::Local {
                what: "git init".into(),
                detail: format!("cannot create {}", repo.display()),
            });
        }
    }
    Ok(())
}

/// Reads `<commit>:<path>` from a bare cache repo.
pub fn read_blob(repo: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>, HubError> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["cat-file", "blob", &format!("{commit}:{path}")])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| local("git cat-file", e))?;
    if out.status.success() {
        Ok(Some(out.stdout))
    } else {
        Ok(None)
    }
}

/// Whether the cache repo already has `commit` (then no fetch is needed).
pub fn has_commit(repo: &Path, commit: &str) -> bool {
    Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct GitOutput {
    status: i32,
    stdout: String,
    stderr: String,
}

fn local(what: &str, e: std::io::Error) -> HubError {
    HubError::Local { what: what.into(), detail: e.to_string() }
}

fn last_line(s: &str) -> String {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().trim_start_matches("fatal: ").to_string()
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

    #[test]
    fn classifies_git_errors() {
        let c = HubClient::new("http://h/git", Duration::from_secs(1));
        let e = c.classify("o", "n", None, "fatal: couldn't find remote ref refs/heads/n\n");
        assert!(matches!(e, HubError::EnvironmentNotFound { .. }));
        assert!(e.to_string().contains("if it is private"));
        let e = c.classify("o", "n", None, "fatal: repository 'http://h/git/o/floxmeta/' not found\n");
        assert!(matches!(e, HubError::OwnerNotFound { .. }));
        let e = c.classify(
            "o",
            "n",
            None,
            "fatal: unable to access 'http://h/git/o/floxmeta/': The requested URL returned error: 500\n",
        );
        assert_eq!(e, HubError::Server { env: "o/n".into(), hub: "http://h/git".into(), status: 500 });
        let e = c.classify("o", "n", None, "fatal: unable to access 'x': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server\n");
        assert!(e.is_unreachable());
        let e =
            c.classify("o", "n", None, "fatal: could not read Username for 'http://h': terminal prompts disabled\n");
        assert!(matches!(e, HubError::TokenRequired { .. }));
    }
}
