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
