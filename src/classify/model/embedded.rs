//! The default model and labels, baked into the binary so the product is "copy and run".
//! `scripts/fetch-assets.sh` puts them in `assets/`; `build.rs` refuses to build without them.
use rust_embed::RustEmbed;
use std::path::Path;

#[derive(RustEmbed)]
#[folder = "assets/"]
#[include = "imagenet_class_index.json"]
#[include = "mobilenet_v1_1.0_224/*"]
struct Assets;

/// The embedded model's name, as `GET /model` reports it.
pub const MODEL_NAME: &str = "mobilenet_v1_1.0_224";

const LABELS: &str = "imagenet_class_index.json";
const FROZEN_GRAPH: &str = "mobilenet_v1_1.0_224/frozen_graph.pb";
const SAVED_MODEL_PREFIX: &str = "mobilenet_v1_1.0_224/saved_model/";

fn file(name: &str) -> std::borrow::Cow<'static, [u8]> {
    // build.rs checked every embedded file exists, so a miss here is a build defect.
    Assets::get(name)
        .unwrap_or_else(|| panic!("embedded asset {name} missing from the build"))
        .data
}

pub fn labels_json() -> std::borrow::Cow<'static, [u8]> {
    file(LABELS)
}

pub fn frozen_graph() -> std::borrow::Cow<'static, [u8]> {
    file(FROZEN_GRAPH)
}

/// The C API loads a SavedModel only from a directory, so write ours out to `dir`.
pub fn write_saved_model(dir: &Path) -> std::io::Result<()> {
    for name in Assets::iter().filter(|n| n.starts_with(SAVED_MODEL_PREFIX)) {
        let path = dir.join(&name[SAVED_MODEL_PREFIX.len()..]);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, file(&name))?;
    }
    Ok(())
}

/// The SHA-256 of an embedded file, computed by rust-embed at build time (no hashing at start).
fn sha256(name: &str) -> [u8; 32] {
    Assets::get(name)
        .unwrap_or_else(|| panic!("embedded asset {name} missing from the build"))
        .metadata
        .sha256_hash()
}

pub fn labels_sha256() -> [u8; 32] {
    sha256(LABELS)
}

pub fn frozen_graph_sha256() -> [u8; 32] {
    sha256(FROZEN_GRAPH)
}

/// Each file of the embedded SavedModel, by its path inside the SavedModel directory, with its
/// SHA-256: what `write_saved_model` writes out.
pub fn saved_model_files() -> Vec<(String, [u8; 32])> {
    Assets::iter()
        .filter(|n| n.starts_with(SAVED_MODEL_PREFIX))
        .map(|n| (n[SAVED_MODEL_PREFIX.len()..].to_owned(), sha256(&n)))
        .collect()
}
