//! `scripts/import-keras-model.sh` end to end. `tests/keras/make_models.py` writes real Keras 2
//! HDF5 files (with tf-keras, Keras 2's own saver) and what Keras itself answers for the golden
//! input buffers; each file is imported, loaded through the service's model code (both forms)
//! or served by the real binary, and must give Keras's probabilities within 1e-5 with the same
//! top-1. Broken files must fail the import with a clear message and leave no directory.
//!
//! Needs the venv `scripts/install-keras-venv.sh` makes (`scripts/test.sh` runs it before
//! `cargo test`). Without it these tests fail: they never skip.
use classifier_api::classify::image::scale_into;
use classifier_api::classify::model::{Engine, ModelSource, Threads, INPUT_LEN};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

// The real-process harness of the API tests; this binary uses only part of it.
#[allow(dead_code)]
#[path = "api/process.rs"]
mod process;

/// The bar: the service against Keras, per probability.
const TOLERANCE: f32 = 1e-5;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    root().join("fixtures/shared")
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("KERAS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".deps/keras-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/install-keras-venv.sh (scripts/test.sh does) or set KERAS_VENV",
        python.display()
    );
    python
}

/// The Keras files and Keras's reference probabilities, made once per test run.
struct Fixture {
    dir: tempfile::TempDir,
    /// The golden buffers' file names (relative to fixtures/shared), in reference order.
    inputs: Vec<String>,
    /// Keras's probabilities per model ("keras2", "keras21"), one row per input.
    reference: HashMap<String, Vec<Vec<f32>>>,
}

impl Fixture {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(venv_python())
            .arg(root().join("tests/keras/make_models.py"))
            .arg(dir.path())
            .arg(golden_dir())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "make_models.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap())
                .unwrap();
        let inputs: Vec<String> = json["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(inputs.len(), 42, "21 photos x 2 resize filters");
        let rows = |model: &str| -> Vec<Vec<f32>> {
            json[model]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    row.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_f64().unwrap() as f32)
                        .collect()
                })
                .collect()
        };
        let reference = ["keras2", "keras21"]
            .into_iter()
            .map(|m| (m.to_owned(), rows(m)))
            .collect();
        Fixture {
            dir,
            inputs,
            reference,
        }
    })
}

fn run_import(model: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(root().join("scripts/import-keras-model.sh"))
        .arg(model)
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

struct Imported {
    dir: PathBuf,
    /// What the import printed (how it loaded the file).
    log: String,
}

/// `name`.h5 imported once per run into the fixture dir (the HTTP test and the engine test
/// share the keras2 import). keras2 gets the made-up labels, so the HTTP test can tell the
/// model directory's labels reached the service.
fn imported(name: &str) -> &'static Imported {
    static DONE: OnceLock<Mutex<HashMap<String, &'static Imported>>> = OnceLock::new();
    let fixture = fixture();
    // Held while importing: two tests wanting the same import wait for one. A panicked import
    // left nothing in the map, so the next test tries again and reports its own failure.
    let mut done = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(imported) = done.get(name) {
        return imported;
    }
    let out = fixture.file(&format!("imported_{name}"));
    let labels = fixture.file("labels.json");
    let extra: &[&str] = if name == "keras2" {
        &["--labels", labels.to_str().unwrap()]
    } else {
        &[]
    };
    let output = run_import(&fixture.file(&format!("{name}.h5")), &out, extra);
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "importing {name}.h5 failed:\n{log}"
    );
    let imported = Box::leak(Box::new(Imported { dir: out, log }));
    done.insert(name.to_owned(), imported);
    imported
}

fn golden_input(name: &str) -> Vec<f32> {
    let raw = std::fs::read(golden_dir().join(name)).unwrap();
    assert_eq!(raw.len(), INPUT_LEN);
    let mut input = vec![0.0; INPUT_LEN];
    scale_into(&raw, &mut input);
    input
}

fn argmax(probs: &[f32]) -> usize {
    (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(b.cmp(&a)))
        .unwrap()
}

/// Runs every golden buffer through `source` and compares with Keras; returns the worst |dp|.
fn assert_agrees_with_keras(source: ModelSource, reference: &[Vec<f32>]) -> f32 {
    let engine = Engine::load(&source, Threads::default()).unwrap();
    let mut worst = 0.0f32;
    for (name, expected) in fixture().inputs.iter().zip(reference) {
        let (probs, classes) = engine.run(&golden_input(name), 1).unwrap();
        assert_eq!(classes, expected.len(), "{name}");
        let diff = probs
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= TOLERANCE,
            "{source:?} {name}: max |dp| {diff} against Keras"
        );
        assert_eq!(argmax(&probs), argmax(expected), "{source:?} {name}: top-1");
        worst = worst.max(diff);
    }
    println!(
        "{source:?}: max |dp| against Keras over {} buffers: {worst:.2e}",
        reference.len()
    );
    worst
}

/// Both forms `--model-dir DIR` can run: the frozen graph, and the SavedModel
/// (`--model-format saved-model`).
fn assert_both_forms_agree(dir: &Path, reference: &[Vec<f32>]) {
    assert_agrees_with_keras(ModelSource::from_dir(dir.to_owned(), false), reference);
    let saved = ModelSource::from_dir(dir.to_owned(), true);
    assert_eq!(saved, ModelSource::Path(dir.join("saved_model")));
    assert_agrees_with_keras(saved, reference);
}

fn reference(model: &str) -> &'static [Vec<f32>] {
    &fixture().reference[model]
}

#[test]
fn a_keras_2_file_imports_whole_and_matches_keras() {
    let imported = imported("keras2");
    // Keras 2.3+ writes `groups: 1` into DepthwiseConv2D, which Keras 3 refuses on its own.
    assert!(
        imported.log.contains("deserialised the whole model")
            && imported.log.contains("dropped the Keras 2 key groups=1"),
        "{}",
        imported.log
    );
    assert_both_forms_agree(&imported.dir, reference("keras2"));
}

#[test]
fn a_keras_2_1_mobilenet_with_relu6_imports_and_matches_keras() {
    let imported = imported("keras21");
    assert!(
        imported.log.contains("deserialised the whole model"),
        "{}",
        imported.log
    );
    assert_both_forms_agree(&imported.dir, reference("keras21"));
}

#[test]
fn a_weights_only_file_is_rebuilt_as_mobilenet_and_says_so() {
    let imported = imported("keras2_weights");
    assert!(
        imported
            .log
            .contains("rebuilt keras.applications.MobileNet(alpha=1, depth_multiplier=1, classes=1000, weights=None)")
            && imported.log.contains("because the file holds weights only"),
        "{}",
        imported.log
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(imported.dir.join("import.json")).unwrap()).unwrap();
    assert!(record["loaded"].as_str().unwrap().starts_with("rebuilt"));
    // The same weights as keras2.h5, so the same answers.
    assert_both_forms_agree(&imported.dir, reference("keras2"));
}

/// A golden buffer as a 224x224 BMP: the service's resize to 224x224 is then the identity, so
/// the model sees exactly the buffer Keras saw.
fn bmp(name: &str) -> Vec<u8> {
    let raw = std::fs::read(golden_dir().join(name)).unwrap();
    let image = image::RgbImage::from_raw(224, 224, raw).unwrap();
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Bmp).unwrap();
    bytes.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_an_imported_model_with_its_labels() {
    let imported = imported("keras2");
    let data = tempfile::tempdir().unwrap();
    // No --labels: the model directory's own (made-up) labels must be the ones answered.
    let server = process::start_server(
        data.path(),
        &["--model-dir", imported.dir.to_str().unwrap()],
    )
    .unwrap();
    let client = reqwest::Client::new();
    for (name, expected) in fixture().inputs.iter().zip(reference("keras2")) {
        let response = client
            .post(server.url("/classify-image"))
            .header("content-type", "image/bmp")
            .body(bmp(name))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await.unwrap();
        let top = argmax(expected);
        assert_eq!(body["classification"], format!("class_{top:04}"), "{name}");
        // The answer has 3 decimals: Keras's value must round to it (give or take TOLERANCE).
        let confidence: f32 = body["confidence"].as_str().unwrap().parse().unwrap();
        assert!(
            (confidence - expected[top]).abs() <= 0.0005 + TOLERANCE,
            "{name}: served {confidence}, Keras {}",
            expected[top]
        );
    }
}

/// Imports `file` and expects exit code 1, an error line containing each of `says`, and no
/// OUT_DIR.
fn assert_refused(file: &str, says: &[&str]) {
    let fixture = fixture();
    // A parent of its own: the import stages its work beside OUT_DIR, and nothing may remain.
    let parent = tempfile::tempdir_in(fixture.dir.path()).unwrap();
    let out = parent.path().join("out");
    let output = run_import(&fixture.file(file), &out, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{file}:\n{stderr}");
    let message = stderr
        .lines()
        .find(|l| l.starts_with("import-keras-model: error: "))
        .unwrap_or_else(|| panic!("{file}: no error line in\n{stderr}"));
    for part in says {
        assert!(message.contains(part), "{file}: {message}");
    }
    let left: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{file}: a failed import left {left:?}");
}

#[test]
fn a_truncated_file_is_refused() {
    assert_refused(
        "truncated.h5",
        &["is not a readable HDF5 file (truncated, or not HDF5 at all)"],
    );
}

#[test]
fn a_model_with_another_input_shape_is_refused() {
    assert_refused(
        "wrong_input.h5",
        &["the model's input is [N,128,128,3]; the service feeds [N,224,224,3]"],
    );
}

#[test]
fn ten_outputs_with_a_thousand_labels_are_refused() {
    assert_refused(
        "ten_classes.h5",
        &[
            "the model has 10 outputs but the labels (",
            "have 1000 entries",
        ],
    );
}

#[test]
fn logits_instead_of_probabilities_are_refused() {
    assert_refused("logits.h5", &["the model's output is not a softmax"]);
}
