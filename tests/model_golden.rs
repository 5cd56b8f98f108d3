//! The model alone against golden.json: the exact 224x224 buffers Pillow produced must give the
//! reference probabilities, through both embedded forms of the model and through a batch.
use classifier_api::classify::image::scale_into;
use classifier_api::classify::model::{
    Batching, Classifier, Engine, ModelConfig, ModelSource, Threads, INPUT_LEN,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/shared")
}

struct Case {
    name: String,
    input: Vec<f32>,
    top5: Vec<(usize, f32)>,
}

/// Every (photo, filter) entry of a golden file, with its input buffer scaled to [-1, 1].
fn golden_cases(file: &str) -> Vec<Case> {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join(file)).unwrap()).unwrap();
    let mut cases = Vec::new();
    for (photo, entry) in golden["images"].as_object().unwrap() {
        for filter in ["pil_nearest", "pil_bilinear"] {
            let e = &entry[filter];
            let raw = std::fs::read(fixtures().join(e["input_file"].as_str().unwrap())).unwrap();
            assert_eq!(raw.len(), INPUT_LEN);
            let mut input = vec![0.0; INPUT_LEN];
            scale_into(&raw, &mut input);
            let top5 = e["top5"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["index"].as_u64().unwrap() as usize,
                        t["prob"].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            cases.push(Case {
                name: format!("{photo}/{filter}"),
                input,
                top5,
            });
        }
    }
    assert_eq!(cases.len(), 42, "21 photos x 2 filters");
    cases
}

/// Golden probabilities are rounded to 6 decimals; the issue allows 1e-4.
fn assert_matches(case: &Case, probs: &[f32]) {
    for &(index, prob) in &case.top5 {
        let got = probs[index];
        assert!(
            (got - prob).abs() < 1e-4,
            "{}: class {index} got {got}, golden {prob}",
            case.name
        );
    }
}

fn engine_matches_golden(source: ModelSource, golden: &str) {
    let engine = Engine::load(&source, Threads::default()).unwrap();
    for case in golden_cases(golden) {
        let (probs, classes) = engine.run(&case.input, 1).unwrap();
        assert_eq!(classes, 1000);
        assert_matches(&case, &probs);
    }
}

#[test]
fn embedded_frozen_graph_matches_golden() {
    engine_matches_golden(ModelSource::EmbeddedFrozenGraph, "golden.json");
}

#[test]
fn embedded_saved_model_matches_golden() {
    engine_matches_golden(ModelSource::EmbeddedSavedModel, "golden.json");
}

#[test]
fn second_model_from_disk_matches_its_golden() {
    for dir in ["saved_model", "frozen_graph.pb"] {
        let path = fixtures().join("mobilenet_v2_1.0_224").join(dir);
        engine_matches_golden(ModelSource::Path(path), "golden_mobilenet_v2_1.0_224.json");
    }
}

#[test]
fn a_batch_gives_each_image_its_own_result() {
    let engine = Engine::load(&ModelSource::EmbeddedFrozenGraph, Threads::default()).unwrap();
    let cases: Vec<Case> = golden_cases("golden.json").into_iter().take(8).collect();
    let batch: Vec<f32> = cases.iter().flat_map(|c| c.input.iter().copied()).collect();
    let (probs, classes) = engine.run(&batch, cases.len()).unwrap();
    for (case, row) in cases.iter().zip(probs.chunks_exact(classes)) {
        let (single, _) = engine.run(&case.input, 1).unwrap();
        let worst = single
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < 1e-5,
            "{}: batch vs single differ by {worst}",
            case.name
        );
        assert_matches(case, row);
    }
}

fn two_inference_threads(threads: Threads, lone: Option<Threads>) -> Classifier {
    Classifier::load(&ModelConfig {
        source: ModelSource::EmbeddedFrozenGraph,
        labels: None,
        threads,
        lone,
        batching: Batching {
            max_batch: 8,
            wait: std::time::Duration::from_millis(5),
            queue_capacity: 64,
            threads: 2,
        },
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_the_inference_thread_get_their_own_answers() {
    let classifier = two_inference_threads(Threads::default(), None);
    let cases = golden_cases("golden.json");
    let answers = all_at_once(&classifier, &cases).await;
    assert_golden(&classifier, &cases, answers);
}

/// One request at a time runs on the lone-request session, many at once on the shared one:
/// both answer as the reference does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lone_request_session_answers_as_the_shared_one() {
    let own = |intra_op| Threads {
        intra_op,
        inter_op: 0,
        own_pools: true,
    };
    let classifier = two_inference_threads(own(1), Some(own(0)));
    let cases = golden_cases("golden.json");
    let mut one_by_one = Vec::new();
    for case in &cases {
        let input = case.input.clone().into_boxed_slice();
        one_by_one.push(classifier.classify(input).await.unwrap());
    }
    assert_golden(&classifier, &cases, one_by_one);
    let together = all_at_once(&classifier, &cases).await;
    assert_golden(&classifier, &cases, together);
}

async fn all_at_once(
    classifier: &Classifier,
    cases: &[Case],
) -> Vec<classifier_api::domain::Classification> {
    futures_util::future::join_all(cases.iter().map(|case| {
        let classifier = classifier.clone();
        let input = case.input.clone().into_boxed_slice();
        async move { classifier.classify(input).await.unwrap() }
    }))
    .await
}

fn assert_golden(
    classifier: &Classifier,
    cases: &[Case],
    answers: Vec<classifier_api::domain::Classification>,
) {
    assert_eq!(answers.len(), cases.len());
    for (case, answer) in cases.iter().zip(answers) {
        let (index, prob) = case.top5[0];
        assert_eq!(
            &*answer.label,
            classifier.labels().get(index).unwrap(),
            "{}",
            case.name
        );
        assert!((answer.confidence - prob).abs() < 1e-4, "{}", case.name);
    }
}

#[test]
fn wrong_label_count_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.json");
    std::fs::write(&labels, r#"{"0": ["n1", "only_one"]}"#).unwrap();
    let err = Classifier::load(&ModelConfig {
        source: ModelSource::EmbeddedFrozenGraph,
        labels: Some(labels),
        threads: Threads::default(),
        lone: None,
        batching: Batching {
            max_batch: 1,
            wait: std::time::Duration::ZERO,
            queue_capacity: 1,
            threads: 1,
        },
    })
    .err()
    .expect("load must fail");
    assert!(err.to_string().contains("1000 outputs"), "{err}");
}

#[test]
fn a_model_dir_that_is_not_a_model_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let err = Engine::load(&ModelSource::Path(missing.clone()), Threads::default())
        .err()
        .expect("no model there");
    assert!(err.to_string().contains("nothing-here"), "{err}");

    let garbage = dir.path().join("frozen_graph.pb");
    std::fs::write(&garbage, b"not a GraphDef").unwrap();
    let err = Engine::load(
        &ModelSource::Path(dir.path().to_owned()),
        Threads::default(),
    )
    .err()
    .expect("garbage is not a graph");
    assert!(err.to_string().contains("GraphDef"), "{err}");
}
