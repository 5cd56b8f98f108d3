//! Which model, labels and preprocessing produce an answer: the identity cached results are filed
//! under, so that a restart with another model or another resize filter never serves an answer
//! the running one would not give, and replicas of different versions sharing one store (during
//! a rolling upgrade) never read each other's results.
//!
//! The model's SHA-256 is of the bytes TensorFlow loads: the frozen GraphDef file itself, or for
//! a SavedModel the manifest of its files, which is what
//! `cd DIR && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum | sha256sum` prints.
//! The embedded model's hashes were taken by rust-embed at build time, so starting costs none.
use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::embedded;
use super::engine::{read_frozen_graph, EngineError, Resolved};
use super::ModelSource;
use crate::classify::image::PreprocessOptions;

/// Bumped whenever a change to the code turns the same bytes into different model inputs (a new
/// decoder, a rounding fix), so results computed by an older build are not served by a newer one.
/// 2: JPEGs decode through libjpeg-turbo, as Pillow's (zune-jpeg's pixels differed slightly).
pub const PIPELINE_REVISION: u32 = 2;

/// Hex digits of the identity that prefix cached results' keys in the store: 64 bits, so two
/// configurations sharing a store collide with negligible odds.
const CACHE_SCOPE_HEX: usize = 16;

/// Hex digits of the model's SHA-256 in `X-Model-Version`.
const SHORT_HEX: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    FrozenGraph,
    SavedModel,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrozenGraph => "frozen_graph",
            Self::SavedModel => "saved_model",
        }
    }
}

/// The model and everything else that decides its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// The model directory's (or file's) name; the embedded model's is its asset name.
    pub name: String,
    pub format: ModelFormat,
    /// Hex SHA-256 of the model (see the module doc for a SavedModel).
    pub sha256: String,
    /// Hex SHA-256 of the labels file: the label is part of a cached answer.
    pub labels_sha256: String,
    pub preprocessing: PreprocessOptions,
    /// Hex SHA-256 over all of the above and [`PIPELINE_REVISION`].
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Model(#[from] EngineError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ModelIdentity {
    /// Hashes what `source` and `labels` name (the embedded files' hashes are built in). Reads the
    /// model's files once: tens of milliseconds for MobileNet, so call it off the async workers.
    pub fn of(
        source: &ModelSource,
        labels: Option<&Path>,
        preprocessing: PreprocessOptions,
    ) -> Result<Self, IdentityError> {
        let (name, format, model) = match source.resolve() {
            Resolved::EmbeddedFrozenGraph => (
                embedded::model_name(),
                ModelFormat::FrozenGraph,
                embedded::frozen_graph_sha256(),
            ),
            Resolved::EmbeddedSavedModel => (
                embedded::model_name(),
                ModelFormat::SavedModel,
                manifest(embedded::saved_model_files()),
            ),
            Resolved::SavedModelDir(dir) => (
                name_of(dir),
                ModelFormat::SavedModel,
                manifest(files_under(dir)?),
            ),
            Resolved::FrozenGraphFile(file) => {
                let named = match source {
                    ModelSource::Path(path) => name_of(path),
                    _ => name_of(&file),
                };
                let bytes = read_frozen_graph(&file)?;
                (
                    named,
                    ModelFormat::FrozenGraph,
                    Sha256::digest(bytes).into(),
                )
            }
        };
        let labels = match labels {
            None => embedded::labels_sha256(),
            Some(path) => Sha256::digest(read(path)?).into(),
        };
        Ok(Self::from_parts(name, format, model, labels, preprocessing))
    }

    fn from_parts(
        name: String,
        format: ModelFormat,
        model: [u8; 32],
        labels: [u8; 32],
        preprocessing: PreprocessOptions,
    ) -> Self {
        let (sha256, labels_sha256) = (hex::encode(model), hex::encode(labels));
        // Everything that changes an answer, one field per line, so no two configurations
        // can write the same text.
        let described = format!(
            "classifier-api model identity\nmodel {sha256}\nlabels {labels_sha256}\n\
             resize_filter {}\njpeg_dct_scaling {}\nexif_orientation {}\npipeline {PIPELINE_REVISION}\n",
            preprocessing.filter,
            preprocessing.jpeg_dct_scaling,
            preprocessing.apply_exif_orientation,
        );
        Self {
            name,
            format,
            sha256,
            labels_sha256,
            preprocessing,
            digest: hex::encode(Sha256::digest(described)),
        }
    }

    /// The start of the model's SHA-256, as `X-Model-Version` carries it.
    pub fn short_sha256(&self) -> &str {
        &self.sha256[..SHORT_HEX]
    }

    /// The prefix of every cached result's key in the store (`m<16 hex>:`).
    pub fn cache_scope(&self) -> String {
        format!("m{}:", &self.digest[..CACHE_SCOPE_HEX])
    }
}

/// The model's name from its path: `DIR/saved_model` and `DIR/frozen_graph.pb`, the two forms of
/// the layout an import writes, are both called `DIR`.
fn name_of(path: &Path) -> String {
    let path = match (path.file_name(), path.parent()) {
        (Some(n), Some(parent)) if n == "saved_model" || n == "frozen_graph.pb" => parent,
        _ => path,
    };
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Every regular file under `dir` by its path relative to `dir` (`/`-separated), with its hash.
fn files_under(dir: &Path) -> Result<Vec<(String, [u8; 32])>, IdentityError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| IdentityError::Io {
            path: current.display().to_string(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| IdentityError::Io {
                    path: current.display().to_string(),
                    source,
                })?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((name, Sha256::digest(read(&path)?).into()));
            }
        }
    }
    Ok(files)
}

/// The SHA-256 of `sha256sum`'s output for `files` sorted by path (bytewise, as `LC_ALL=C sort`).
fn manifest(mut files: Vec<(String, [u8; 32])>) -> [u8; 32] {
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut listing = String::new();
    for (name, hash) in &files {
        let _ = writeln!(listing, "{}  {name}", hex::encode(hash));
    }
    Sha256::digest(listing).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::ResizeFilter;
    use std::process::Command;

    fn options(filter: ResizeFilter) -> PreprocessOptions {
        PreprocessOptions {
            filter,
            ..PreprocessOptions::default()
        }
    }

    fn embedded(source: ModelSource) -> ModelIdentity {
        ModelIdentity::of(&source, None, PreprocessOptions::default()).unwrap()
    }

    fn assets() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mobilenet_v1_1.0_224")
    }

    #[test]
    fn the_embedded_frozen_graph_hashes_like_sha256sum_of_its_file() {
        let id = embedded(ModelSource::EmbeddedFrozenGraph);
        let file = assets().join("frozen_graph.pb");
        assert_eq!(
            id.sha256,
            hex::encode(Sha256::digest(std::fs::read(&file).unwrap()))
        );
        assert_eq!(id.format, ModelFormat::FrozenGraph);
        assert_eq!(id.name, "mobilenet_v1_1.0_224");
        // The same file named on disk is the same model, named after its directory.
        let on_disk =
            ModelIdentity::of(&ModelSource::Path(file), None, PreprocessOptions::default())
                .unwrap();
        assert_eq!(on_disk.sha256, id.sha256);
        assert_eq!(on_disk.digest, id.digest);
        assert_eq!(on_disk.name, "mobilenet_v1_1.0_224");
    }

    #[test]
    fn a_saved_model_hashes_like_the_documented_shell_command() {
        let dir = assets().join("saved_model");
        let shell = Command::new("sh")
            .arg("-c")
            .arg("find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum | sha256sum")
            .current_dir(&dir)
            .output()
            .unwrap();
        let printed = String::from_utf8(shell.stdout).unwrap();
        let on_disk =
            ModelIdentity::of(&ModelSource::Path(dir), None, PreprocessOptions::default()).unwrap();
        assert_eq!(
            printed.split_whitespace().next(),
            Some(on_disk.sha256.as_str())
        );
        assert_eq!(on_disk.format, ModelFormat::SavedModel);
        assert_eq!(on_disk.name, "mobilenet_v1_1.0_224");
        // The embedded copy is the same files, hashed at build time.
        assert_eq!(
            embedded(ModelSource::EmbeddedSavedModel).sha256,
            on_disk.sha256
        );
    }

    #[test]
    fn everything_that_changes_an_answer_changes_the_digest() {
        let (model, labels) = ([1; 32], [2; 32]);
        let make = |name: &str, model, labels, preprocessing| {
            ModelIdentity::from_parts(
                name.into(),
                ModelFormat::FrozenGraph,
                model,
                labels,
                preprocessing,
            )
        };
        let nearest = options(ResizeFilter::Nearest);
        let base = || make("m", model, labels, nearest);
        let variants = [
            make("m", [3; 32], labels, nearest),
            make("m", model, [3; 32], nearest),
            make("m", model, labels, options(ResizeFilter::Bilinear)),
            make(
                "m",
                model,
                labels,
                PreprocessOptions {
                    jpeg_dct_scaling: true,
                    ..nearest
                },
            ),
            make(
                "m",
                model,
                labels,
                PreprocessOptions {
                    apply_exif_orientation: true,
                    ..nearest
                },
            ),
        ];
        let mut scopes: Vec<String> = variants.iter().map(ModelIdentity::cache_scope).collect();
        scopes.push(base().cache_scope());
        scopes.sort();
        scopes.dedup();
        assert_eq!(scopes.len(), variants.len() + 1, "{scopes:?}");
        // Stable: the same configuration, the same scope, in every process.
        assert_eq!(base().cache_scope(), base().cache_scope());
        // Where the file came from (its name) is not part of what it computes.
        assert_eq!(make("other", model, labels, nearest).digest, base().digest);
    }

    #[test]
    fn a_labels_file_counts_by_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("labels.json");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/imagenet_class_index.json"),
            &copy,
        )
        .unwrap();
        let same = ModelIdentity::of(
            &ModelSource::EmbeddedFrozenGraph,
            Some(&copy),
            PreprocessOptions::default(),
        )
        .unwrap();
        assert_eq!(
            same.digest,
            embedded(ModelSource::EmbeddedFrozenGraph).digest
        );
        std::fs::write(&copy, br#"{"0": ["n0", "zero"]}"#).unwrap();
        let other = ModelIdentity::of(
            &ModelSource::EmbeddedFrozenGraph,
            Some(&copy),
            PreprocessOptions::default(),
        )
        .unwrap();
        assert_ne!(other.digest, same.digest);
    }

    #[test]
    fn a_missing_model_or_labels_file_is_named_in_the_error() {
        let missing = ModelSource::Path("/nonexistent/nothing-here".into());
        let err = ModelIdentity::of(&missing, None, PreprocessOptions::default()).unwrap_err();
        assert!(err.to_string().contains("nothing-here"), "{err}");
        assert!(err.to_string().contains("frozen GraphDef"), "{err}");
        let err = ModelIdentity::of(
            &ModelSource::EmbeddedFrozenGraph,
            Some(Path::new("/nonexistent/labels.json")),
            PreprocessOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("labels.json"), "{err}");
    }

    #[test]
    fn the_short_form_and_the_scope_are_prefixes_of_the_hashes() {
        let id = embedded(ModelSource::EmbeddedFrozenGraph);
        assert_eq!(id.short_sha256().len(), SHORT_HEX);
        assert!(id.sha256.starts_with(id.short_sha256()));
        assert_eq!(
            id.cache_scope(),
            format!("m{}:", &id.digest[..CACHE_SCOPE_HEX])
        );
    }
}
