//! P12 the update case (issue 28): a node that ran generation 1 starts generation 2, which
//! shares 90 % of its store paths with generation 1 (`flox/large:2`, see world/README.md),
//! against a node that pulled image v1 pulling image v2 of the same closures (P11's images:
//! per-path layers share the unchanged paths' layers, a single layer shares nothing). Time from
//! the pod's first CRI call to its first output, and bytes transferred, for each.
//!
//! Each turn starts from an empty node: flox runs a `flox/large:1` pod (realized, rendered,
//! viewed) and removes it; the image side pulls v1 through CRI (fetched and unpacked). Then the
//! timed start of generation 2 / v2. Both images go again after the turn (see P11).
use std::time::Instant;

use anyhow::bail;
use imageless_e2e::flox_node::{env_pod, runc_pod};
use imageless_e2e::oci_image::{self, BuiltImage, LayerCompression, Layering};
use imageless_e2e::registry::Registry;
use imageless_e2e::{PodRunner, RunOptions, FLOX_EMPTY_IMAGE};

use crate::context::Bench;
use crate::p11_cold_vs_image::{
    build_and_push, first_line, hub_cache_bytes_since, remove_images, remove_tree, settle, Case, Variant,
};
use crate::report::{figure, Results};
use crate::stats::{ms, summarize, Target};
use crate::timing::start_timed;

const REPS: usize = 3;

/// The images of the update case (generation 1 then 2 of each).
pub(crate) const VARIANTS: [Variant; 2] = [
    Variant { layering: Layering::PerPath, compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.3) },
    Variant { layering: Layering::Single, compression: LayerCompression::Gzip, target: Target::RatioAtMost(0.3) },
];

#[derive(Default)]
struct Side {
    first_output: Vec<f64>,
    bytes: Vec<f64>,
}

/// `case.env` names the environment without a generation; generations 1 and 2 are compared.
pub async fn run(bench: &Bench, case: &Case<'_>, results: &mut Results) -> anyhow::Result<()> {
    let env = case.env;
    let key = env.replace('/', "_");
    let world = bench.node.hub.world()?;
    let gens = &world["environments"][env]["generations"];
    let (g1, g2) = (&gens["1"], &gens["2"]);
    let (c1, c2) = (oci_image::closure_of_generation(g1), oci_image::closure_of_generation(g2));
    if c1.is_empty() || c2.is_empty() {
        bail!("world.json has no generations 1 and 2 of {env}: rebuild the world");
    }
    let shared = c2.iter().filter(|p| c1.contains(p)).count();
    let both: Vec<String> = c1.iter().chain(c2.iter().filter(|p| !c1.contains(p))).cloned().collect();

    let registry = Registry::start()?;
    imageless_e2e::config::write_plain_http_host(&bench.registry_hosts_dir(), &registry.addr)?;
    let mut images: Vec<[(BuiltImage, String); 2]> = Vec::new();
    let mut per_gen = Vec::new();
    for (n, g) in [(1, g1), (2, g2)] {
        bench.say(&format!("P12: realizing {env}:{n} for its images"));
        let scratch = bench.dir.join(format!("p12-{key}-{n}"));
        let store = oci_image::realize_store(
            &bench.bins.imageless(),
            &bench.node_config(&scratch.join("state"), "")?,
            &scratch,
            &format!("{env}:{n}"),
        )?;
        per_gen.push(build_and_push(
            bench,
            &registry,
            &store,
            g,
            case.command,
            &scratch,
            &format!("{key}-v{n}"),
            case.variants,
        )?);
        remove_tree(&scratch);
    }
    let (v1, v2) = (per_gen.remove(0), per_gen.remove(0));
    for (a, b) in v1.into_iter().zip(v2) {
        images.push([a, b]);
    }

    let runner = bench.runner().await?;
    let opts = bench.run_options();
    let mut flox = Side::default();
    let mut by_image: Vec<Side> = case.variants.iter().map(|_| Side::default()).collect();
    bench.say(&format!(
        "P12: {REPS} updates each ({shared} of {} paths shared): {env} 1 → 2 vs image v1 → v2",
        c2.len()
    ));
    for rep in 0..REPS {
        for k in 0..=case.variants.len() {
            let idx = (k + rep) % (case.variants.len() + 1);
            if idx == 0 {
                flox_update(bench, &runner, &opts, case, &both, &mut flox).await?;
            } else {
                image_update(bench, &registry, &runner, &opts, case, &images[idx - 1], &mut by_image[idx - 1]).await?;
            }
        }
    }
    bench.make_cold(&both)?;

    results.samples(&format!("P12.{key}.flox.first_output"), &flox.first_output);
    let f = summarize(&flox.first_output).expect("samples");
    let flox_mb = summarize(&flox.bytes).expect("samples").median / 1e6;
    for (v, side) in case.variants.iter().zip(&by_image) {
        let vk = v.key();
        results.samples(&format!("P12.{key}.image_{vk}.first_output"), &side.first_output);
        let i = summarize(&side.first_output).expect("samples");
        let what = format!("{} {} image", v.layering.as_str().replace('_', "-"), v.compression.as_str());
        results.add(figure(
            &format!("P12.{key}.vs_{vk}"),
            &format!(
                "P12 update {env} 1 → 2 ({shared} of {} paths shared) → first output, flox vs the {what} v1 → v2, \
                 median of {REPS}",
                c2.len()
            ),
            "ms",
            f.median,
            Some(i.median),
            &format!("{what} v2 after v1: CRI pull + runc pod"),
            v.target,
        ));
        results.add(figure(
            &format!("P12.{key}.bytes_{vk}"),
            &format!("P12 bytes transferred for the update of {env} 1 → 2: flox vs the {what} v1 → v2"),
            "MB",
            flox_mb,
            Some(summarize(&side.bytes).expect("samples").median / 1e6),
            &format!("{what} (the registry's count)"),
            Target::None,
        ));
    }
    Ok(())
}

/// Generation 1 run on an empty node, then generation 2 timed.
async fn flox_update(
    bench: &Bench,
    runner: &PodRunner,
    opts: &RunOptions,
    case: &Case<'_>,
    both: &[String],
    side: &mut Side,
) -> anyhow::Result<()> {
    bench.make_cold(both)?;
    for (n, timed) in [(1, false), (2, true)] {
        if timed {
            settle().await?;
        }
        let mark = bench.node.hub.log_mark();
        let yaml = env_pod(&format!("p12-flox-{n}"), &format!("{}:{n}", case.env), FLOX_EMPTY_IMAGE, &[case.command]);
        let t = start_timed(runner, &yaml, opts, Instant::now()).await?;
        let out = first_line(&t.pod).await?;
        t.pod.remove().await?;
        if out.trim() != case.prints {
            bail!("P12 flox pod of generation {n} printed {out:?}, expected {:?}", case.prints);
        }
        if timed {
            side.first_output.push(ms(t.first_output));
            side.bytes.push(hub_cache_bytes_since(bench, mark) as f64);
        }
    }
    Ok(())
}

/// Image v1 pulled on an empty node, then v2 pulled and run, timed.
async fn image_update(
    bench: &Bench,
    registry: &Registry,
    runner: &PodRunner,
    opts: &RunOptions,
    case: &Case<'_>,
    [(v1, r1), (v2, r2)]: &[(BuiltImage, String); 2],
    side: &mut Side,
) -> anyhow::Result<()> {
    remove_images(bench, &[(v1, r1), (v2, r2)])?;
    let client = bench.node.containerd.client().await?;
    client.pull_image(r1).await.map_err(|e| anyhow::anyhow!("CRI PullImage {r1}: {e}"))?;
    settle().await?;
    let mark = registry.log_mark();
    let t0 = Instant::now();
    client.pull_image(r2).await.map_err(|e| anyhow::anyhow!("CRI PullImage {r2}: {e}"))?;
    let t = start_timed(runner, &runc_pod("p12-image", r2, &[case.command]), opts, t0).await?;
    let out = first_line(&t.pod).await?;
    t.pod.remove().await?;
    if out.trim() != case.prints {
        bail!("P12 image pod ({r2}) printed {out:?}, expected {:?}", case.prints);
    }
    side.first_output.push(ms(t.first_output));
    side.bytes.push(registry.bytes_served_since(mark) as f64);
    remove_images(bench, &[(v1, r1), (v2, r2)])
}
