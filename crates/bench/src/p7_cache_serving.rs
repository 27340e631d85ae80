//! P7 serving a binary cache: 16 concurrent clients each fetching every narinfo and NAR of
//! `flox/large`'s closure (GET, one keep-alive connection per client: `curl -K` with the
//! whole list) from the hub vs from nginx (Debian's package) serving the same cache directory
//! as static files. Rounds alternate who goes first; every client's byte count is checked.

use imageless_e2e::static_server::Nginx;

use crate::cache_files::{self};
use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};

const CLIENTS: usize = 16;
const ROUNDS: usize = 3;

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    let hub = &bench.node.hub;
    let files = cache_files::of_closure(&hub.root, closure)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    bench.say(&format!(
        "P7: {CLIENTS} clients × {} files ({:.0} MB) of {env}, hub vs nginx, {ROUNDS} rounds",
        files.len(),
        total as f64 / 1e6
    ));
    let nginx = Nginx::start(&bench.dir, &hub.root.join("cache"))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for hub_turn in if round % 2 == 0 { [true, false] } else { [false, true] } {
            let (url, samples) = if hub_turn { (&hub.url, &mut ours) } else { (&nginx.url, &mut theirs) };
            samples.push(ms(cache_files::fetch_with_clients(&bench.dir, CLIENTS, std::slice::from_ref(url), &files)?));
        }
    }
    drop(nginx);
    results.samples("P7.hub", &ours);
    results.samples("P7.nginx", &theirs);
    let (o, t) = (summarize(&ours).expect("samples").median, summarize(&theirs).expect("samples").median);
    results.add(figure(
        "P7.cache_serving",
        &format!(
            "P7 serving {env}'s closure ({} files, {:.0} MB) to {CLIENTS} clients at once, median of {ROUNDS}",
            files.len(),
            total as f64 / 1e6
        ),
        "s",
        o / 1000.0,
        Some(t / 1000.0),
        "nginx, same files as static files",
        Target::RatioAtMost(1.5),
    ));
    Ok(())
}
