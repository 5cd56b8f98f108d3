//! The default model and labels, baked into the binary so the product is "copy and run".
//! Which model: build.rs sets `CLASSIFIER_EMBEDDED_MODEL_DIR` to `assets/mobilenet_v1_1.0_224`
//! (put there by `scripts/fetch-assets.sh`) or to the directory `CLASSIFIER_EMBED_MODEL` names
//! (one `scripts/import-keras-model.sh` wrote), and refuses to build without its files.
use rust_embed::RustEmbed;
use std::path::Path;

#[derive(RustEmbed)]
#[folder = "$CLASSIFIER_EMBEDDED_MODEL_DIR/"]
#[include = "frozen_graph.pb"]
#[include = "saved_model/*"]
struct Model;

/// The model directory's own labels, or the shipped ones (build.rs decides).
static LABELS: &[u8] = include_bytes!(env!("CLASSIFIER_EMBEDDED_LABELS"));

const FROZEN_GRAPH: &str = "frozen_graph.pb";
const SAVED_MODEL_PREFIX: &str = "saved_model/";

fn file(name: &str) -> std::borrow::Cow<'static, [u8]> {
    // build.rs checked every embedded file exists, so a miss here is a build defect.
    Model::get(name)
        .unwrap_or_else(|| panic!("embedded model file {name} missing from the build"))
        .data
}

pub fn labels_json() -> &'static [u8] {
    LABELS
}

pub fn frozen_graph() -> std::borrow::Cow<'static, [u8]> {
    file(FROZEN_GRAPH)
}

/// The C API loads a SavedModel only from a directory, so write ours out to `dir`.
pub fn write_saved_model(dir: &Path) -> std::io::Result<()> {
    for name in Model::iter().filter(|n| n.starts_with(SAVED_MODEL_PREFIX)) {
        let path = dir.join(&name[SAVED_MODEL_PREFIX.len()..]);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, file(&name))?;
    }
    Ok(())
}

/// The embedded model directory's name, as `GET /model` reports it.
pub fn model_name() -> String {
    let dir = Path::new(env!("CLASSIFIER_EMBEDDED_MODEL_DIR"));
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The SHA-256 of an embedded model file, computed by rust-embed at build time (no hashing at
/// start).
fn sha256(name: &str) -> [u8; 32] {
    Model::get(name)
        .unwrap_or_else(|| panic!("embedded model file {name} missing from the build"))
        .metadata
        .sha256_hash()
}

/// The labels are include_bytes!'d, not rust-embedded, so hashed here (35 KB: microseconds).
pub fn labels_sha256() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(LABELS).into()
}

pub fn frozen_graph_sha256() -> [u8; 32] {
    sha256(FROZEN_GRAPH)
}

/// Each file of the embedded SavedModel, by its path inside the SavedModel directory, with its
/// SHA-256: what `write_saved_model` writes out.
pub fn saved_model_files() -> Vec<(String, [u8; 32])> {
    Model::iter()
        .filter(|n| n.starts_with(SAVED_MODEL_PREFIX))
        .map(|n| (n[SAVED_MODEL_PREFIX.len()..].to_owned(), sha256(&n)))
        .collect()
}
