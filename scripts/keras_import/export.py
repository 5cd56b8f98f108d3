"""Writes the model in the two forms the service loads, under the shipped model's tensor names,
then runs both with TensorFlow and compares them with Keras on the probe batch."""
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from .failure import ImportFailure
from .interface import SIDE

# The names the service's engine looks up (src/classify/model/engine.rs) and the shipped model
# has. The frozen GraphDef has no signature to read names from, so its names are the contract;
# the SavedModel's signature names them too, and the engine reads them from there.
INPUT = "input_1"
OUTPUT_KEY = "predictions"
FROZEN_OUTPUT = "Identity"
# Same TensorFlow, same kernels: anything above float32 noise means the export changed the model.
TOLERANCE = 1e-5


def write(model, out_dir, interface):
    spec = tf.TensorSpec([None, SIDE, SIDE, 3], tf.float32, name=INPUT)

    def serve(x):
        # training=False: batch norm uses its moving statistics and dropout is off.
        return model(x, training=False)

    saved_model = os.path.join(out_dir, "saved_model")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default", fn=lambda x: {OUTPUT_KEY: serve(x)}, input_signature=[spec]
    )
    archive.write_out(saved_model, verbose=False)

    concrete = tf.function(serve).get_concrete_function(spec)
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    names = {node.name: node.op for node in graph_def.node}
    if names.get(INPUT) != "Placeholder" or FROZEN_OUTPUT not in names:
        raise ImportFailure(f"internal: the frozen graph lacks {INPUT} or {FROZEN_OUTPUT}")
    with open(os.path.join(out_dir, "frozen_graph.pb"), "wb") as f:
        f.write(graph_def.SerializeToString())

    diffs = {
        "saved_model": _max_diff(_run_saved_model(saved_model, interface.probe), interface.expected),
        "frozen_graph": _max_diff(_run_frozen(graph_def, interface.probe), interface.expected),
    }
    for form, diff in diffs.items():
        if not diff <= TOLERANCE:
            raise ImportFailure(
                f"internal: the exported {form} differs from Keras by {diff:.3g} on the probe batch"
            )
    return diffs


def _max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _run_saved_model(path, probe):
    signature = tf.saved_model.load(path).signatures["serving_default"]
    return signature(**{INPUT: tf.constant(probe)})[OUTPUT_KEY].numpy()


def _run_frozen(graph_def, probe):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(f"{FROZEN_OUTPUT}:0", {f"{INPUT}:0": probe})
