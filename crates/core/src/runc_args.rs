//! The parts of a runc command line the wrapper needs to decide what to do.
//!
//! The wrapper never rebuilds the command line: it execs the real runc with the original
//! argv. So parsing only extracts what it needs and stays tolerant of flags it does not know.

/// Global runc flags that take a value (`--root X` or `--root=X`).
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuncInvocation {
    /// `--log` file: runc's JSON log, whose last error line the runc shim reports to CRI.
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub root: Option<String>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Command {
    Create {
        bundle: String,
        id: String,
    },
    /// `runc run` creates and starts in one step; treated like create.
    Run {
        bundle: String,
        id: String,
    },
    /// `runc exec --process FILE ID`; `process` is None for the argv form, which we pass through.
    Exec {
        process: Option<String>,
        id: String,
    },
    Delete {
        id: String,
        force: bool,
    },
    #[default]
    Other,
}

/// Splits `--flag=value` / `--flag value`; returns the value and how many args were consumed.
fn flag_value<'a>(args: &'a [String], i: usize, names: &[&str]) -> Option<(&'a str, usize)> {
    let arg = args[i].as_str();
    for name in names {
        if arg == *name {
            return args.get(i + 1).map(|v| (v.as_str(), 2));
        }
        if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some((v, 1));
        }
    }
    None
}

impl RuncInvocation {
    /// `args` excludes argv[0].
    pub fn parse(args: &[String]) -> RuncInvocation {
        let mut inv = RuncInvocation::default();
        let mut i = 0;
        while i < args.len() {
            if let Some((v, n)) = flag_value(args, i, &GLOBAL_WITH_VALUE) {
                let name = args[i].split('=').next().unwrap_or_default();
                match name {
                    "--log" => inv.log = Some(v.to_string()),
                    "--log-format" => inv.log_format = Some(v.to_string()),
                    "--root" => inv.root = Some(v.to_string()),
                    _ => {}
                }
                i += n;
                continue;
            }
            if args[i].starts_with('-') {
                i += 1;
                continue;
            }
            break;
        }
        let Some(sub) = args.get(i) else { return inv };
        let rest = &args[i + 1..];
        inv.command = match sub.as_str() {
            "create" | "run" => {
                let (bundle, id) = create_args(rest);
                match (sub.as_str(), id) {
                    ("create", Some(id)) => Command::Create { bundle, id },
                    ("run", Some(id)) => Command::Run { bundle, id },
                    _ => Command::Other,
                }
            }
            "exec" => exec_args(rest),
            "delete" => {
                let force = rest.iter().any(|a| a == "--force" || a == "-f");
                match rest.iter().rev().find(|a| !a.starts_with('-')) {
                    Some(id) => Command::Delete { id: id.clone(), force },
                    None => Command::Other,
                }
            }
            _ => Command::Other,
        };
        inv
    }
}

fn create_args(rest: &[String]) -> (String, Option<String>) {
    const WITH_VALUE: [&str; 5] = ["--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"];
    let mut bundle = ".".to_string();
    let mut id = None;
    let mut i = 0;
    while i < rest.len() {
        if let Some((v, n)) = flag_value(rest, i, &WITH_VALUE) {
            if matches!(rest[i].split('=').next(), Some("--bundle" | "-b")) {
                bundle = v.to_string();
            }
            i += n;
        } else if rest[i].starts_with('-') {
            i += 1;
        } else {
            id = Some(rest[i].clone());
            i += 1;
        }
    }
    (bundle, id)
}

fn exec_args(rest: &[String]) -> Command {
    const WITH_VALUE: [&str; 16] = [
        "--process",
        "-p",
        "--console-socket",
        "--pid-file",
        "--preserve-fds",
        "--cwd",
        "--env",
        "-e",
        "--user",
        "-u",
        "--additional-gids",
        "-g",
        "--process-label",
        "--apparmor",
        "--cap",
        "--cgroup",
    ];
    let mut process = None;
    let mut i = 0;
    while i < rest.len() {
        if let Some((v, n)) = flag_value(rest, i, &WITH_VALUE) {
            if matches!(rest[i].split('=').next(), Some("--process" | "-p")) {
                process = Some(v.to_string());
            }
            i += n;
        } else if rest[i].starts_with('-') {
            i += 1;
        } else {
            return Command::Exec { process, id: rest[i].clone() };
        }
    }
    Command::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RuncInvocation {
        RuncInvocation::parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn create_as_the_runc_shim_calls_it() {
        let inv = parse("--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json create --bundle /b --pid-file /b/init.pid abc123");
        assert_eq!(inv.log.as_deref(), Some("/b/log.json"));
        assert_eq!(inv.root.as_deref(), Some("/run/containerd/runc/k8s.io"));
        assert_eq!(inv.command, Command::Create { bundle: "/b".into(), id: "abc123".into() });
        let inv = parse("--log=/l create -b=/x --console-socket /s id2");
        assert_eq!(inv.command, Command::Create { bundle: "/x".into(), id: "id2".into() });
    }

    #[test]
    fn exec_delete_and_others() {
        let inv = parse("--root /r --log /l exec --process /tmp/p.json --detach --pid-file /p id");
        assert_eq!(inv.command, Command::Exec { process: Some("/tmp/p.json".into()), id: "id".into() });
        assert_eq!(parse("exec -t id sh -c x").command, Command::Exec { process: None, id: "id".into() });
        assert_eq!(parse("--root /r delete --force id").command, Command::Delete { id: "id".into(), force: true });
        assert_eq!(parse("--root /r state id").command, Command::Other);
        assert_eq!(parse("features").command, Command::Other);
        assert_eq!(parse("--version").command, Command::Other);
    }
}
