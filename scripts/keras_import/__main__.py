"""import-keras-model.sh MODEL.h5 OUT_DIR [--labels imagenet_class_index.json] [--force]

Exit 0 with OUT_DIR written; 1 with one line saying why the file cannot be imported (OUT_DIR is
then left as it was: everything is written to a temp dir beside it and renamed at the end);
2 for bad arguments."""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

from . import hdf5, labels
from .failure import ImportFailure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The labels the service embeds by default (scripts/fetch-assets.sh copies them there).
DEFAULT_LABELS = os.path.join(ROOT, "assets", "imagenet_class_index.json")
LABELS_NAME = "imagenet_class_index.json"
STARTED = time.monotonic()


def log(message):
    print(f"import-keras-model: [{time.monotonic() - STARTED:5.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="import-keras-model.sh",
        description="Import a Keras HDF5 model into a directory `classifier-api serve --model-dir` serves.",
    )
    parser.add_argument("model", metavar="MODEL.h5", help="a Keras (2.x or 3) model saved as legacy HDF5")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the model directory to write (must not exist)")
    parser.add_argument(
        "--labels",
        metavar="imagenet_class_index.json",
        help=f"labels for the model's outputs, copied into OUT_DIR (default: {DEFAULT_LABELS})",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        run(args)
    except ImportFailure as e:
        print(f"import-keras-model: error: {e}", file=sys.stderr)
        return 1
    return 0


def run(args):
    labels_path = args.labels or DEFAULT_LABELS
    if args.labels is None and not os.path.isfile(labels_path):
        raise ImportFailure(f"no --labels given and {labels_path} is missing (run scripts/fetch-assets.sh)")
    labels_count = labels.count(labels_path)
    out_dir = os.path.abspath(args.out_dir)
    if os.path.lexists(out_dir) and not args.force and not _empty_dir(out_dir):
        raise ImportFailure(f"{args.out_dir} already exists; remove it or pass --force")
    h5 = hdf5.read(args.model)
    log(
        f"{args.model}: Keras {h5.keras_version or '(version not recorded)'} HDF5, "
        f"{'whole model' if h5.model_config else 'weights only'}, {len(h5.layer_weights)} weighted layers"
    )

    # TensorFlow and Keras load only for files worth it: importing them takes seconds.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Keras 3 names a Keras 2 model's input as a list and warns at each call with one tensor.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    import keras
    import tensorflow as tf

    from . import export, interface, load

    loaded = load.load(h5, log)
    log(loaded.how)
    checked = interface.check(loaded.model, labels_count, labels_path)
    log(f"interface: input [N,224,224,3] float32, output [N,{checked.classes}] softmax, labels {labels_path}")

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        diffs = export.write(loaded.model, staging, checked)
        log(
            "wrote saved_model/ and frozen_graph.pb; both agree with Keras on a probe batch "
            f"(max |dp| {max(diffs.values()):.2g})"
        )
        shutil.copyfile(labels_path, os.path.join(staging, LABELS_NAME))
        record = {
            "source": os.path.abspath(args.model),
            "source_sha256": _sha256(args.model),
            "written_by_keras": h5.keras_version,
            "loaded": loaded.how,
            "classes": checked.classes,
            "labels": os.path.abspath(labels_path),
            "frozen_graph": {"input": f"{export.INPUT}:0", "output": f"{export.FROZEN_OUTPUT}:0"},
            "saved_model": {
                "signature": "serving_default",
                "input": export.INPUT,
                "output": export.OUTPUT_KEY,
            },
            "self_check_max_abs_diff": diffs,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
        with open(os.path.join(staging, "import.json"), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        if os.path.lexists(out_dir):
            shutil.rmtree(out_dir) if os.path.isdir(out_dir) else os.remove(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"done: classifier-api serve --model-dir {args.out_dir}")


def _empty_dir(path):
    return os.path.isdir(path) and not os.listdir(path)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
