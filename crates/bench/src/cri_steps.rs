//! Where a pod start spends its time as containerd's CRI sees it: RunPodSandbox,
//! CreateContainer and StartContainer, each from the daemon's "X for …" line to its
//! "… returns" line in its debug log (timestamps in ns). Pure parsing, unit-tested.
use std::collections::HashMap;

/// The three CRI calls of a one-container pod start, in ms; `None` when a line is missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSteps {
    pub pod: String,
    pub run_sandbox: Option<f64>,
    pub create_container: Option<f64>,
    pub start_container: Option<f64>,
}

/// Seconds since the Unix epoch of a `time="2026-11-30T12:05:41.207232324Z"` field.
fn timestamp(line: &str) -> Option<f64> {
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    let (date, clock) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut c = clock.split(':');
    let (h, min, s) = (c.next()?.parse::<f64>().ok()?, c.next()?.parse::<f64>().ok()?, c.next()?.parse::<f64>().ok()?);
    // Days since the epoch (civil calendar), enough for differences within a run.
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + day - 719469;
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + s)
}

/// The text between `after` and the next `until`.
fn between<'a>(line: &'a str, after: &str, until: &str) -> Option<&'a str> {
    let rest = &line[line.find(after)? + after.len()..];
    Some(&rest[..rest.find(until)?])
}

/// Per pod (by uid, in order of appearance) the CRI step times found in `log`.
pub fn parse(log: &str) -> Vec<PodSteps> {
    let mut order: Vec<String> = Vec::new();
    let mut pods: HashMap<String, PodSteps> = HashMap::new();
    let mut begun: HashMap<(String, &'static str), f64> = HashMap::new();
    let mut uid_of: HashMap<String, String> = HashMap::new();
    for line in log.lines() {
        if !line.contains("level=info") {
            continue;
        }
        let Some(t) = timestamp(line) else { continue };
        let returns = line.contains(" returns ");
        let (uid, step) = if line.contains("msg=\"RunPodSandbox for ") {
            let Some(uid) = between(line, ",Uid:", ",") else { continue };
            if !pods.contains_key(uid) {
                let name = between(line, "{Name:", ",").unwrap_or("").to_string();
                order.push(uid.to_string());
                pods.insert(uid.to_string(), PodSteps { pod: name, ..Default::default() });
            }
            if let Some(sandbox) = between(line, "returns sandbox id \\\"", "\\\"") {
                uid_of.insert(sandbox.to_string(), uid.to_string());
            }
            (uid.to_string(), "sandbox")
        } else if line.contains("msg=\"CreateContainer within sandbox \\\"") {
            let Some(uid) = between(line, "sandbox \\\"", "\\\"").and_then(|s| uid_of.get(s)).cloned() else {
                continue;
            };
            if let Some(container) = between(line, "returns container id \\\"", "\\\"") {
                uid_of.insert(container.to_string(), uid.clone());
            }
            (uid, "create")
        } else if line.contains("msg=\"StartContainer for \\\"") {
            let Some(uid) = between(line, "for \\\"", "\\\"").and_then(|c| uid_of.get(c)).cloned() else { continue };
            (uid, "start")
        } else {
            continue;
        };
        if !returns {
            begun.insert((uid, step), t);
            continue;
        }
        let Some(t0) = begun.remove(&(uid.clone(), step)) else { continue };
        let Some(p) = pods.get_mut(&uid) else { continue };
        let took = Some((t - t0) * 1000.0);
        match step {
            "sandbox" => p.run_sandbox = took,
            "create" => p.create_container = took,
            _ => p.start_container = took,
        }
    }
    order.into_iter().filter_map(|u| pods.remove(&u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"time="2026-11-30T12:05:41.200000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p1-flox,Uid:u-1,Namespace:default,Attempt:0,}"
time="2026-11-30T12:05:41.207501439Z" level=debug msg="Sandbox config &PodSandboxConfig{Metadata:&PodSandboxMetadata{Name:p1-flox,Uid:u-1,"
time="2026-11-30T12:05:41.250000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p1-flox,Uid:u-1,Namespace:default,Attempt:0,} returns sandbox id \"sb1\""
time="2026-11-30T12:05:41.251000000Z" level=info msg="CreateContainer within sandbox \"sb1\" for container &ContainerMetadata{Name:main,Attempt:0,}"
time="2026-11-30T12:05:41.281000000Z" level=info msg="CreateContainer within sandbox \"sb1\" for &ContainerMetadata{Name:main,Attempt:0,} returns container id \"c1\""
time="2026-11-30T12:05:41.282000000Z" level=info msg="StartContainer for \"c1\""
time="2026-11-30T12:05:41.302000000Z" level=info msg="StartContainer for \"c1\" returns successfully"
time="2026-12-01T00:00:00.100000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p1-runc,Uid:u-2,Namespace:default,Attempt:0,}"
"#;

    #[test]
    fn steps_of_each_pod() {
        let steps = parse(LOG);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].pod, "p1-flox");
        let near = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-3;
        assert!(near(steps[0].run_sandbox, 50.0), "{:?}", steps[0]);
        assert!(near(steps[0].create_container, 30.0));
        assert!(near(steps[0].start_container, 20.0));
        assert_eq!(steps[1], PodSteps { pod: "p1-runc".into(), ..Default::default() });
    }

    #[test]
    fn timestamps_cross_midnight() {
        let a = timestamp(r#"time="2026-11-30T23:59:59.900000000Z" x"#).unwrap();
        let b = timestamp(r#"time="2026-12-01T00:00:00.100000000Z" x"#).unwrap();
        assert!((b - a - 0.2).abs() < 1e-6, "{}", b - a);
    }
}
