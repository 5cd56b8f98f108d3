//! One TensorFlow session running MobileNet: load (frozen graph or SavedModel), run a batch.
//! Not thread-safe by design: exactly one inference thread owns it (see `worker.rs`).
use std::path::{Path, PathBuf};
use tensorflow::{
    Graph, ImportGraphDefOptions, Operation, SavedModelBundle, Session, SessionOptions,
    SessionRunArgs, Status, Tensor,
};

use super::embedded;

/// Pixels per image the model takes: 224 x 224 x RGB.
pub const INPUT_LEN: usize = crate::classify::image::SIDE * crate::classify::image::SIDE * 3;

/// Where the graph comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The embedded frozen GraphDef, imported straight from memory (the default: fastest, see readme).
    EmbeddedFrozenGraph,
    /// The embedded SavedModel, written to a private temp dir and loaded from there.
    EmbeddedSavedModel,
    /// A SavedModel directory (has `saved_model.pb`) or a frozen GraphDef file / directory holding
    /// `frozen_graph.pb`, on disk.
    Path(PathBuf),
}

/// The labels file a model directory carries (what `scripts/import-keras-model.sh` writes).
pub const LABELS_FILE: &str = "imagenet_class_index.json";

impl ModelSource {
    /// `--model-dir DIR`. A directory holding both forms side by side (`frozen_graph.pb` and
    /// `saved_model/`: the shipped layout, and what `scripts/import-keras-model.sh` writes) runs
    /// the frozen graph, or its SavedModel when `saved_model` is asked for.
    pub fn from_dir(dir: PathBuf, saved_model: bool) -> Self {
        let inner = dir.join("saved_model");
        if saved_model && inner.join("saved_model.pb").is_file() {
            return Self::Path(inner);
        }
        Self::Path(dir)
    }

    /// The labels file that comes with a model on disk, if there is one: in the model
    /// directory, or beside a frozen graph file or a SavedModel directory (so `DIR/saved_model`
    /// finds `DIR`'s labels). Never further up: a plain directory's parent is someone else's.
    pub fn labels_beside(&self) -> Option<PathBuf> {
        let Self::Path(path) = self else {
            return None;
        };
        let own = path.is_dir().then(|| path.join(LABELS_FILE));
        let container = path.is_file() || path.join("saved_model.pb").is_file();
        let beside = container
            .then(|| path.parent().map(|parent| parent.join(LABELS_FILE)))
            .flatten();
        [own, beside].into_iter().flatten().find(|f| f.is_file())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading the model failed: {0}")]
    Load(String),
    #[error("running the model failed: {0}")]
    Run(String),
}

fn load_err(context: &str) -> impl Fn(Status) -> EngineError + '_ {
    move |s| EngineError::Load(format!("{context}: {s}"))
}

/// TF intra-/inter-op thread counts; 0 lets TensorFlow choose (all cores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Threads {
    pub intra_op: u32,
    pub inter_op: u32,
    /// Thread pools of the session's own instead of the process-wide ones. TensorFlow sizes
    /// its process-wide pools once, from the first session, and oneDNN keeps the kernels it
    /// builds per inter-op thread, with the first session's thread split baked in: a second
    /// session with other counts ran as the first one (model-only batch 1, 2 threads after 1:
    /// 7.7 ms, as 1 thread; 1 thread after 2: 10.1 ms). With pools of its own each session
    /// kept its own speed (6.6 and 7.2 ms). The intra-op pool follows only when the process
    /// runs with `TF_OVERRIDE_GLOBAL_THREADPOOL=1` (`main` sets it for `--lone-request-session`).
    pub own_pools: bool,
}

impl Threads {
    /// A serialized `tensorflow.ConfigProto` holding only the thread settings (fields 2 and 5,
    /// varints, and 9, `use_per_session_threads`, a bool); hand-encoded because the crate has
    /// no ConfigProto builder.
    fn config_proto(self) -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut proto = Vec::new();
        for (tag, value) in [(0x10, self.intra_op), (0x28, self.inter_op)] {
            if value > 0 {
                proto.push(tag);
                varint(u64::from(value), &mut proto);
            }
        }
        if self.own_pools {
            proto.extend_from_slice(&[0x48, 1]);
        }
        proto
    }
}

/// What a [`ModelSource`] names on disk or in the binary, decided once so that loading the model
/// and hashing it (`identity.rs`) always read the same files.
pub(super) enum Resolved<'a> {
    EmbeddedFrozenGraph,
    EmbeddedSavedModel,
    SavedModelDir(&'a Path),
    FrozenGraphFile(PathBuf),
}

impl ModelSource {
    pub(super) fn resolve(&self) -> Resolved<'_> {
        match self {
            ModelSource::EmbeddedFrozenGraph => Resolved::EmbeddedFrozenGraph,
            ModelSource::EmbeddedSavedModel => Resolved::EmbeddedSavedModel,
            ModelSource::Path(path) if path.join("saved_model.pb").is_file() => {
                Resolved::SavedModelDir(path)
            }
            ModelSource::Path(path) if path.is_dir() => {
                Resolved::FrozenGraphFile(path.join("frozen_graph.pb"))
            }
            ModelSource::Path(path) => Resolved::FrozenGraphFile(path.clone()),
        }
    }
}

/// The bytes of a frozen GraphDef file, or an error that says what `--model-dir` expects.
pub(super) fn read_frozen_graph(file: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(file).map_err(|e| {
        EngineError::Load(format!(
            "{}: {e} (expected a SavedModel directory or a frozen GraphDef)",
            file.display()
        ))
    })
}

pub struct Engine {
    session: Session,
    input: Operation,
    input_index: i32,
    output: Operation,
    output_index: i32,
    /// Keeps the graph alive for as long as the session and operations refer to it.
    _graph: Graph,
}

impl Engine {
    pub fn load(source: &ModelSource, threads: Threads) -> Result<Self, EngineError> {
        let mut options = SessionOptions::new();
        options
            .set_config(&threads.config_proto())
            .map_err(load_err("session options"))?;
        match source.resolve() {
            Resolved::EmbeddedFrozenGraph => Self::from_frozen(&embedded::frozen_graph(), &options),
            Resolved::EmbeddedSavedModel => {
                // TF reads the variables while loading, so the directory can go right after.
                let dir = tempfile::tempdir().map_err(|e| EngineError::Load(e.to_string()))?;
                embedded::write_saved_model(dir.path())
                    .map_err(|e| EngineError::Load(format!("extracting the SavedModel: {e}")))?;
                Self::from_saved_model(dir.path(), &options)
            }
            Resolved::SavedModelDir(dir) => Self::from_saved_model(dir, &options),
            Resolved::FrozenGraphFile(file) => {
                Self::from_frozen(&read_frozen_graph(&file)?, &options)
            }
        }
    }

    /// Frozen GraphDef convention (Keras export): input `input_1:0`, output `Identity:0`.
    fn from_frozen(bytes: &[u8], options: &SessionOptions) -> Result<Self, EngineError> {
        let mut graph = Graph::new();
        graph
            .import_graph_def(bytes, &ImportGraphDefOptions::new())
            .map_err(load_err("importing the GraphDef"))?;
        let session = Session::new(options, &graph).map_err(load_err("creating the session"))?;
        let input = graph
            .operation_by_name_required("input_1")
            .map_err(load_err("frozen graph input"))?;
        let output = graph
            .operation_by_name_required("Identity")
            .map_err(load_err("frozen graph output"))?;
        Ok(Self {
            session,
            input,
            input_index: 0,
            output,
            output_index: 0,
            _graph: graph,
        })
    }

    /// SavedModel: tag `serve`, signature `serving_default`, its single input and output.
    fn from_saved_model(dir: &Path, options: &SessionOptions) -> Result<Self, EngineError> {
        let mut graph = Graph::new();
        let bundle = SavedModelBundle::load(options, ["serve"], &mut graph, dir)
            .map_err(load_err("loading the SavedModel"))?;
        let signature = bundle
            .meta_graph_def()
            .get_signature("serving_default")
            .map_err(load_err("SavedModel signature"))?;
        let only = |map: &std::collections::HashMap<String, tensorflow::TensorInfo>, what: &str| {
            let mut infos = map.values();
            match (infos.next(), infos.next()) {
                (Some(info), None) => Ok(info.name().clone()),
                _ => Err(EngineError::Load(format!(
                    "serving_default must have exactly one {what}, it has {}",
                    map.len()
                ))),
            }
        };
        let input_name = only(signature.inputs(), "input")?;
        let output_name = only(signature.outputs(), "output")?;
        let input = graph
            .operation_by_name_required(&input_name.name)
            .map_err(load_err("SavedModel input"))?;
        let output = graph
            .operation_by_name_required(&output_name.name)
            .map_err(load_err("SavedModel output"))?;
        Ok(Self {
            session: bundle.session,
            input,
            input_index: input_name.index,
            output,
            output_index: output_name.index,
            _graph: graph,
        })
    }

    /// Runs `n` images (`inputs.len() == n * INPUT_LEN`, scaled to [-1, 1]); returns the `[n, classes]`
    /// softmax output row-major, and the class count.
    pub fn run(&self, inputs: &[f32], n: usize) -> Result<(Vec<f32>, usize), EngineError> {
        debug_assert_eq!(inputs.len(), n * INPUT_LEN);
        let side = crate::classify::image::SIDE as u64;
        let tensor = Tensor::new(&[n as u64, side, side, 3])
            .with_values(inputs)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let mut args = SessionRunArgs::new();
        args.add_feed(&self.input, self.input_index, &tensor);
        let fetch = args.request_fetch(&self.output, self.output_index);
        self.session
            .run(&mut args)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let out: Tensor<f32> = args
            .fetch(fetch)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let dims = out.dims();
        if dims.len() != 2 || dims[0] != n as u64 {
            return Err(EngineError::Run(format!(
                "unexpected output shape {dims:?}"
            )));
        }
        let classes = dims[1] as usize;
        Ok((out.to_vec(), classes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_proto_holds_only_what_is_set() {
        assert_eq!(Threads::default().config_proto(), Vec::<u8>::new());
        let threads = Threads {
            intra_op: 1,
            inter_op: 300,
            own_pools: true,
        };
        // intra_op_parallelism_threads = 1, inter_op_parallelism_threads = 300 (two-byte
        // varint), use_per_session_threads = true.
        assert_eq!(threads.config_proto(), [0x10, 1, 0x28, 0xac, 0x02, 0x48, 1]);
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn a_directory_with_both_forms_runs_the_one_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        touch(&root.join("frozen_graph.pb"));
        touch(&root.join("saved_model/saved_model.pb"));
        assert_eq!(
            ModelSource::from_dir(root.clone(), false),
            ModelSource::Path(root.clone())
        );
        assert_eq!(
            ModelSource::from_dir(root.clone(), true),
            ModelSource::Path(root.join("saved_model"))
        );
        // A SavedModel directory itself has no saved_model/ inside: taken as it is.
        let saved_model_dir = root.join("saved_model");
        assert_eq!(
            ModelSource::from_dir(saved_model_dir.clone(), true),
            ModelSource::Path(saved_model_dir)
        );
    }

    #[test]
    fn labels_come_from_the_model_directory_never_from_further_up() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        let labels = model.join(LABELS_FILE);
        touch(&model.join("frozen_graph.pb"));
        touch(&model.join("saved_model/saved_model.pb"));
        let source = |p: PathBuf| ModelSource::Path(p).labels_beside();
        assert_eq!(source(model.clone()), None);
        // A labels file next to the model directory belongs to someone else.
        touch(&dir.path().join(LABELS_FILE));
        assert_eq!(source(model.clone()), None);

        touch(&labels);
        assert_eq!(source(model.clone()), Some(labels.clone()));
        assert_eq!(source(model.join("frozen_graph.pb")), Some(labels.clone()));
        assert_eq!(source(model.join("saved_model")), Some(labels));
        assert_eq!(ModelSource::EmbeddedFrozenGraph.labels_beside(), None);
    }
}
