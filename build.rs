//! Fails early, with the fix in the message, when the data we embed is missing, and makes the
//! binaries find libtensorflow at run time without LD_LIBRARY_PATH.
use std::path::Path;

/// Files rust-embed bakes into the binary (see `src/classify/model/embedded.rs`).
const EMBEDDED: &[&str] = &[
    "assets/imagenet_class_index.json",
    "assets/mobilenet_v1_1.0_224/frozen_graph.pb",
    "assets/mobilenet_v1_1.0_224/saved_model/saved_model.pb",
    "assets/mobilenet_v1_1.0_224/saved_model/variables/variables.index",
    "assets/mobilenet_v1_1.0_224/saved_model/variables/variables.data-00000-of-00001",
];

fn main() {
    println!("cargo:rerun-if-changed=assets");
    // The page (src/http/web.rs) is embedded too: a file added to web/ must rebuild.
    println!("cargo:rerun-if-changed=web");
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let missing: Vec<_> = EMBEDDED
        .iter()
        .filter(|f| !Path::new(&root).join(f).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "model assets missing: {missing:?}\nrun scripts/fetch-assets.sh (copies them from ../shared/assets, checking sha256)"
    );

    // $ORIGIN/lib: the copy-and-run bundle ships the TF libraries next to the binary.
    // The project's own install dir: `cargo run` / `cargo test` work without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib");
    let tf_lib = Path::new(&root).join(".deps/libtensorflow/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", tf_lib.display());
}
