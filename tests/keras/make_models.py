"""Writes the Keras files tests/model_import.rs imports, and Keras's own probabilities for the
golden input buffers, into OUT_DIR:

    keras2.h5          tf_keras.applications.MobileNet(weights=None): a real Keras 2 HDF5 file
                       (written by Keras 2's own saver, so its DepthwiseConv2D carries `groups: 1`,
                       which Keras 3 refuses without help)
    keras2_weights.h5  the same model's save_weights: no architecture, so the import must rebuild
                       MobileNet and load these weights by layer name
    keras21.h5         MobileNet as Keras 2.1 built it (the brief's era): Activation(relu6) after
                       every batch norm, DepthwiseConv2D with `padding='same'` and no `groups`,
                       and the softmax before the final Reshape
    wrong_input.h5     MobileNet(input_shape=(128, 128, 3))
    ten_classes.h5     MobileNet(classes=10)
    logits.h5          MobileNet(classifier_activation=None): logits, not probabilities
    truncated.h5       the first half of keras2.h5
    labels.json        1000 made-up labels (class_0000 ...), for checking they reach the service
    reference.json     {"inputs": [input_file, ...], "keras2": [[p0..p999], ...], "keras21": ...}:
                       what Keras itself computes for each golden buffer (x/127.5-1, float32)

usage: make_models.py OUT_DIR FIXTURES_DIR (the directory holding golden.json)

A MobileNet with weights=None answers every input with 1/1000 for each class (its batch norms are
identities and the activations die out), which would make "same top-1" meaningless and let a lost
batch norm go unnoticed. So each model's batch norms get the statistics of a fixed-seed
calibration batch and random scales and offsets, and conv_preds is scaled so the logits spread:
the answers then differ per image (top-1 0.05-0.2, margins above 1e-3) and every layer matters.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

L = tf_keras.layers
SEED = 17
# Standard deviation of the logits across classes after calibration.
LOGIT_SPREAD = 2.5


def relu6(x):
    """Keras 2.1's keras.applications.mobilenet.relu6."""
    return tf_keras.backend.relu(x, max_value=6)


class DepthwiseConv2D(L.DepthwiseConv2D):
    """Keras 2.1's DepthwiseConv2D config: no `groups` (that came with Keras 2.3)."""

    def get_config(self):
        config = super().get_config()
        config.pop("groups", None)
        return config


# (pointwise filters, stride) of blocks 1..13, as in keras.applications.mobilenet.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def keras21_mobilenet(classes=1000):
    """keras/applications/mobilenet.py of Keras 2.1.x, alpha 1, 224x224."""
    inputs = L.Input((224, 224, 3))
    x = L.Conv2D(32, 3, padding="same", use_bias=False, strides=2, name="conv1")(inputs)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.Activation(relu6, name="conv1_relu")(x)
    for block, (filters, stride) in enumerate(BLOCKS, start=1):
        x = DepthwiseConv2D(3, padding="same", strides=stride, use_bias=False, name=f"conv_dw_{block}")(x)
        x = L.BatchNormalization(name=f"conv_dw_{block}_bn")(x)
        x = L.Activation(relu6, name=f"conv_dw_{block}_relu")(x)
        x = L.Conv2D(filters, 1, padding="same", use_bias=False, name=f"conv_pw_{block}")(x)
        x = L.BatchNormalization(name=f"conv_pw_{block}_bn")(x)
        x = L.Activation(relu6, name=f"conv_pw_{block}_relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Reshape((1, 1, 1024), name="reshape_1")(x)
    x = L.Dropout(1e-3, name="dropout")(x)
    x = L.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
    x = L.Activation("softmax", name="act_softmax")(x)
    x = L.Reshape((classes,), name="reshape_2")(x)
    return tf_keras.Model(inputs, x, name="mobilenet_1.00_224")


def calibrate(model, rng):
    """Batch-norm statistics from a calibration batch, then logits scaled to LOGIT_SPREAD.
    MobileNet is a chain, so running its layers in order is running the model."""
    coarse = rng.uniform(-1, 1, (8, 7, 7, 3)).astype(np.float32)
    x = tf.image.resize(coarse, (224, 224)).numpy() + rng.normal(0, 0.1, (8, 224, 224, 3))
    x = np.clip(x, -1, 1).astype(np.float32)
    for layer in model.layers[1:]:
        if isinstance(layer, L.BatchNormalization):
            channels = x.shape[-1]
            gamma = rng.uniform(0.8, 1.25, channels)
            beta = rng.uniform(-0.2, 0.6, channels)
            layer.set_weights([gamma, beta, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))])
        if layer.get_config().get("activation") == "softmax":
            spread = x.reshape(len(x), -1).std(axis=1).mean()
            preds = model.get_layer("conv_preds")
            kernel, bias = preds.get_weights()
            preds.set_weights([kernel * (LOGIT_SPREAD / spread), bias])
            x = x * (LOGIT_SPREAD / spread)
        x = np.asarray(layer(x, training=False))


def golden_buffers(fixtures):
    with open(os.path.join(fixtures, "golden.json")) as f:
        golden = json.load(f)
    names, buffers = [], []
    for entry in golden["images"].values():
        for resize in ("pil_nearest", "pil_bilinear"):
            name = entry[resize]["input_file"]
            raw = np.fromfile(os.path.join(fixtures, name), dtype=np.uint8).reshape(224, 224, 3)
            names.append(name)
            # The service's scaling (src/classify/image/mod.rs scale_into), in float32.
            buffers.append(raw.astype(np.float32) / np.float32(127.5) - np.float32(1))
    return names, np.stack(buffers)


def probabilities(model, inputs):
    return [[float(p) for p in row] for row in model.predict(inputs, batch_size=8, verbose=0)]


def main(out_dir, fixtures):
    os.makedirs(out_dir, exist_ok=True)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    names, inputs = golden_buffers(fixtures)
    reference = {"inputs": names}

    keras2 = tf_keras.applications.MobileNet(weights=None)
    calibrate(keras2, rng)
    keras2.save(path("keras2.h5"))
    keras2.save_weights(path("keras2_weights.h5"))
    reference["keras2"] = probabilities(keras2, inputs)

    keras21 = keras21_mobilenet()
    calibrate(keras21, rng)
    keras21.save(path("keras21.h5"))
    reference["keras21"] = probabilities(keras21, inputs)

    tf_keras.applications.MobileNet(weights=None, input_shape=(128, 128, 3)).save(path("wrong_input.h5"))
    tf_keras.applications.MobileNet(weights=None, classes=10).save(path("ten_classes.h5"))
    tf_keras.applications.MobileNet(weights=None, classifier_activation=None).save(path("logits.h5"))
    with open(path("keras2.h5"), "rb") as f:
        whole = f.read()
    with open(path("truncated.h5"), "wb") as f:
        f.write(whole[: len(whole) // 2])

    labels = {str(i): [f"n{i:08d}", f"class_{i:04d}"] for i in range(1000)}
    with open(path("labels.json"), "w") as f:
        json.dump(labels, f)
    with open(path("reference.json"), "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
