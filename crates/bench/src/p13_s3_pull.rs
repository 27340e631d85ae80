//! P13 a cold pull from an S3 bucket: `imageless pull flox/large` from an `s3://` substituter on
//! Garage (a single-node cluster on loopback holding the world's cache) vs `nix copy --from` the
//! same bucket through Garage's plain-HTTP website endpoint (Debian's Nix 2.8 is built without
//! S3 support), each into an empty store, in alternating turns. Target ratio ≤ 0.5.
use std::path::Path;
use std::process::Command;

use anyhow::bail;
use imageless_e2e::flox_node::NodeConfigFile;
use imageless_e2e::garage::Garage;

use crate::context::Bench;
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::timed;

const BUCKET: &str = "nix-cache";
const REPS: usize = 3;

fn remove(dir: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

pub fn run(bench: &Bench, env: &str, closure: &[String], results: &mut Results) -> anyhow::Result<()> {
    bench.say("P13: starting Garage and uploading the world's cache to a bucket");
    let garage = Garage::start()?;
    garage.create_bucket(BUCKET)?;
    let files = garage.upload_dir(BUCKET, &bench.node.hub.root.join("cache"))?;
    let website = garage.serve_website_as_localhost(BUCKET)?;
    let credentials = bench.dir.join("p13-aws-credentials");
    garage.write_credentials_file(&credentials)?;
    bench.say(&format!("P13: {files} files in s3://{BUCKET}; cold {env} ({} paths), {REPS} turns each", closure.len()));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for turn in 0..REPS * 2 {
        let scratch = bench.dir.join(format!("p13-{turn}"));
        std::fs::create_dir_all(&scratch)?;
        // Pairs alternate who goes first: S3 then Nix, Nix then S3, …
        let first_of_pair = turn % 2 == 0;
        let s3_turn = ((turn / 2) % 2 == 0) == first_of_pair;
        if s3_turn {
            let file = NodeConfigFile {
                cache_url: garage.substituter(BUCKET),
                extra: format!("s3_credentials_file = {:?}", credentials.display().to_string()),
                ..NodeConfigFile::new(&scratch, &bench.node.hub)
            };
            let config = scratch.join("node.toml");
            file.write(&config);
            let (took, out) = timed(Command::new(bench.bins.imageless()).args(["pull", env, "--config"]).arg(&config))?;
            if !Path::new(&out).join("bin").is_dir() {
                bail!("imageless pull {env} from S3 printed {out:?}, which has no bin/");
            }
            ours.push(ms(took));
        } else {
            let mut cmd = Command::new("nix");
            cmd.args(["copy", "--from", &website, "--to"])
                .arg(scratch.join("nix-store"))
                .args(["--option", "trusted-public-keys", &bench.node.hub.public_key()?])
                .args(["--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0"])
                .args(closure)
                .env("XDG_CACHE_HOME", scratch.join("xdg-cache"));
            theirs.push(ms(timed(&mut cmd)?.0));
        }
        remove(&scratch);
    }
    results.samples("P13.s3_pull", &ours);
    results.samples("P13.nix_copy_website", &theirs);
    let med = |s: &[f64]| summarize(s).expect("samples").median / 1000.0;
    results.add(figure(
        "P13",
        &format!(
            "P13 cold imageless pull of {env} ({} paths) from an s3:// bucket on Garage, median of {REPS}",
            closure.len()
        ),
        "s",
        med(&ours),
        Some(med(&theirs)),
        "nix copy --from the same bucket through Garage's website endpoint",
        Target::RatioAtMost(0.5),
    ));
    Ok(())
}
