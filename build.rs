//! Picks the model to embed (`CLASSIFIER_EMBED_MODEL`, default the shipped MobileNet), fails early,
//! with the fix in the message, when its files are missing, and makes the binaries find
//! libtensorflow at run time without LD_LIBRARY_PATH.
use std::path::{Path, PathBuf};

/// The model directory embedded unless `CLASSIFIER_EMBED_MODEL` names another one in the same
/// layout (what `scripts/import-keras-model.sh` writes).
const DEFAULT_MODEL: &str = "assets/mobilenet_v1_1.0_224";
/// The shipped model's labels; an imported model directory carries its own.
const DEFAULT_LABELS: &str = "assets/imagenet_class_index.json";
const LABELS_FILE: &str = "imagenet_class_index.json";
/// What `src/classify/model/embedded.rs` bakes in from the model directory.
const MODEL_FILES: &[&str] = &[
    "frozen_graph.pb",
    "saved_model/saved_model.pb",
    "saved_model/variables/variables.index",
    "saved_model/variables/variables.data-00000-of-00001",
];

fn main() {
    println!("cargo:rerun-if-changed=assets");
    // The page (src/http/web.rs) is embedded too: a file added to web/ must rebuild.
    println!("cargo:rerun-if-changed=web");
    println!("cargo:rerun-if-env-changed=CLASSIFIER_EMBED_MODEL");
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    let (model, labels) = embedded_model(&root);
    // Read by rust-embed's folder attribute and include_bytes! in embedded.rs.
    println!(
        "cargo:rustc-env=CLASSIFIER_EMBEDDED_MODEL_DIR={}",
        model.display()
    );
    println!(
        "cargo:rustc-env=CLASSIFIER_EMBEDDED_LABELS={}",
        labels.display()
    );

    // $ORIGIN/lib: the copy-and-run bundle ships the TF libraries next to the binary.
    // The project's own install dir: `cargo run` / `cargo test` work without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib");
    let tf_lib = root.join(".deps/libtensorflow/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", tf_lib.display());
}

/// The model directory and labels file to embed, both checked.
fn embedded_model(root: &Path) -> (PathBuf, PathBuf) {
    let Some(chosen) = std::env::var_os("CLASSIFIER_EMBED_MODEL").filter(|v| !v.is_empty()) else {
        let model = root.join(DEFAULT_MODEL);
        let labels = root.join(DEFAULT_LABELS);
        check(
            &model,
            &labels,
            "run scripts/fetch-assets.sh (copies them from ../shared/assets, checking sha256)",
        );
        return (model, labels);
    };
    // Relative to the checkout (cargo runs build scripts there); an absolute path stays as it is.
    let model = root.join(chosen);
    println!("cargo:rerun-if-changed={}", model.display());
    let own_labels = model.join(LABELS_FILE);
    let labels = if own_labels.is_file() {
        own_labels
    } else {
        root.join(DEFAULT_LABELS)
    };
    check(
        &model,
        &labels,
        "CLASSIFIER_EMBED_MODEL must name a model directory as scripts/import-keras-model.sh writes it",
    );
    println!(
        "cargo:warning=embedding the model in {} (labels {})",
        model.display(),
        labels.display()
    );
    (model, labels)
}

fn check(model: &Path, labels: &Path, fix: &str) {
    let missing: Vec<_> = MODEL_FILES
        .iter()
        .map(|f| model.join(f))
        .chain([labels.to_owned()])
        .filter(|f| !f.is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "model files missing: {missing:?}\n{fix}"
    );
}
