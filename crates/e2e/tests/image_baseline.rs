//! The registry baseline of the cold-start figures (issue 28): the image a user would build
//! instead of `flox/large` (its closure under /nix/store and its command), pushed with Debian's
//! skopeo to Debian's docker-registry on loopback and pulled by the node's own containerd
//! 1.7.24 through CRI PullImage (plain HTTP configured through `hosts.toml`), then run on the
//! runc handler: it must print what the flox pod prints. Built one layer per path, as one layer,
//! and capped at 100 layers (the largest paths alone, the rest together), as dockerTools does.
use imageless_e2e::flox_node::{activator, block_on, imageless, node_config, runc_pod, FloxNode};
use imageless_e2e::oci_image::{self, ImageSpec, LayerCompression, Layering};
use imageless_e2e::registry::Registry;
use imageless_e2e::{config, ContainerdVersion};

const ENV: &str = "flox/large";
const TEXT: &str = "large-app: 250 libraries";

#[test]
fn large_env_image_pulls_from_a_registry_and_runs() {
    let version = ContainerdVersion::V1_7;
    let registry = Registry::start().expect("docker-registry on loopback");
    let node =
        FloxNode::start_with_hook(version, "", Some(config::registry_hook(version, vec![registry.addr.clone()])));
    let world = node.world();
    let env = &world["environments"][ENV];
    let generation = &env["generations"][env["live_generation"].to_string()];
    let closure = oci_image::closure_of_generation(generation);
    assert!(closure.len() >= 300, "{ENV} has {} paths", closure.len());

    let scratch = node.dir.path().join("image");
    let config_text = node_config(&node.hub, &activator(), &scratch.join("state"), "").unwrap();
    let store = oci_image::realize_store(&imageless(), &config_text, &scratch, ENV).unwrap();

    let mut pulled = std::collections::HashSet::new();
    for (layering, compression) in [
        (Layering::PerPath, LayerCompression::Gzip),
        (Layering::Single, LayerCompression::Zstd),
        (Layering::Capped(100), LayerCompression::Gzip),
    ] {
        let tag = format!("{}-{}", layering.as_str(), compression.as_str()).replace('_', "-");
        let spec = ImageSpec {
            store_dir: store.clone(),
            closure: closure.clone(),
            env: vec![oci_image::path_of_generation(generation)],
            cmd: vec!["large-app".into()],
            layering,
            compression,
        };
        let image = oci_image::build(&spec, &scratch.join(&tag), &tag).unwrap();
        let layers = match layering {
            Layering::PerPath => closure.len(),
            Layering::Single => 1,
            Layering::Capped(n) => n,
        };
        assert_eq!(image.layers.len(), layers, "{tag}");
        assert!(image.tar_bytes > 200_000_000, "{tag}: {} tar bytes", image.tar_bytes);
        if layering != Layering::PerPath {
            // Deterministic: the same closure gives the same image.
            let again = oci_image::build(&spec, &scratch.join(format!("{tag}-again")), &tag).unwrap();
            assert_eq!(again.manifest.digest, image.manifest.digest);
        }
        let reference = registry.reference(&format!("flox/large:{tag}"));
        oci_image::push(&image, &reference).unwrap();

        let mark = registry.log_mark();
        let yaml = runc_pod(&format!("image-{tag}"), &reference, &["large-app"]);
        let (code, out, err) = block_on(node.run_to_end(&yaml, &[])).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(code, 0, "{tag}: stdout {out:?} stderr {err:?}");
        assert!(out.contains(TEXT), "{tag}: stdout {out:?} stderr {err:?}");
        // The pull went to the registry and fetched every layer the node did not hold yet (the
        // capped image's single-path layers are the per-path image's).
        let served = registry.bytes_served_since(mark);
        let new_bytes: u64 =
            image.layers.iter().filter(|l| pulled.insert(l.digest.clone())).map(|l| l.size).sum::<u64>()
                + image.config.size;
        assert!(
            served >= new_bytes && new_bytes > 10_000_000,
            "{tag}: registry served {served} bytes, the image's new layers and config are {new_bytes}"
        );
        std::fs::remove_dir_all(scratch.join(&tag)).unwrap();
    }
}
