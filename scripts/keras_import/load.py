"""Turns the file into a Keras 3 model: the whole saved model if Keras 3 can deserialise it (with
the help Keras 2 files need), else keras.applications.MobileNet rebuilt with the file's weights."""
from dataclasses import dataclass

import keras

from .failure import ImportFailure


class Keras2DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D as Keras 2 wrote it. Keras 2.1 defined the layer inside
    keras.applications.mobilenet (hence the brief's custom objects); Keras 2.3 and later write
    `groups: 1`, inherited from Conv, into its config, and Keras 3 refuses the unknown key
    ("Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}"). A depthwise
    convolution has no groups to speak of, so 1 is dropped; anything else is not MobileNet's layer."""

    dropped_groups = 0

    def __init__(self, *args, groups=None, **kwargs):
        if groups not in (None, 1):
            raise ValueError(f"DepthwiseConv2D with groups={groups} has no Keras 3 equivalent")
        if groups is not None:
            Keras2DepthwiseConv2D.dropped_groups += 1
        super().__init__(*args, **kwargs)


# What Keras 2 MobileNet files name that Keras 3 spells differently. `relu6` is the Keras 2.1
# activation function (K.relu(x, max_value=6)), the same as Keras 3's own relu6.
CUSTOM_OBJECTS = {
    "relu6": keras.activations.relu6,
    "DepthwiseConv2D": Keras2DepthwiseConv2D,
}


@dataclass
class Loaded:
    model: keras.Model
    # How the model came to be, for the log and import.json.
    how: str


def load(h5, log):
    if h5.model_config is None:
        reason = "the file holds weights only, no model_config"
    else:
        try:
            model = keras.models.load_model(h5.path, compile=False, custom_objects=CUSTOM_OBJECTS)
        except Exception as e:  # Keras raises TypeError, ValueError, KeyError... for bad configs.
            reason = f"keras.models.load_model failed: {type(e).__name__}: {_first_lines(e)}"
        else:
            how = "deserialised the whole model (keras.models.load_model)"
            if Keras2DepthwiseConv2D.dropped_groups:
                how += (
                    f"; dropped the Keras 2 key groups=1 from {Keras2DepthwiseConv2D.dropped_groups} "
                    "DepthwiseConv2D layers"
                )
            return Loaded(model, how)
    log(f"cannot use the saved architecture ({reason})")
    log("rebuilding keras.applications.MobileNet(weights=None) and loading the file's weights by layer name")
    model, summary = rebuild_mobilenet(h5, reason)
    return Loaded(model, f"{summary}, because {reason}")


def _first_lines(error, limit=400):
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def rebuild_mobilenet(h5, reason):
    """keras.applications.MobileNet shaped like the file's weights (width from conv1, depth
    multiplier from conv_dw_1, classes from conv_preds), every weighted layer filled by name."""
    weights = h5.layer_weights
    needed = ("conv1", "conv_dw_1", "conv_preds")
    missing = [name for name in needed if name not in weights]
    if missing:
        raise ImportFailure(
            f"{h5.path}: cannot import it ({reason}), and its weights are not Keras MobileNet's "
            f"(no layer {', '.join(missing)}; it has {_some(weights)})"
        )
    filters = weights["conv1"][0].shape[-1]
    alpha = filters / 32
    depth_multiplier = int(weights["conv_dw_1"][0].shape[-1])
    classes = int(weights["conv_preds"][0].shape[-1])
    input_shape = h5.input_shape() or (224, 224, 3)
    try:
        model = keras.applications.MobileNet(
            input_shape=input_shape,
            alpha=alpha,
            depth_multiplier=depth_multiplier,
            weights=None,
            classes=classes,
        )
    except ValueError as e:
        raise ImportFailure(f"{h5.path}: cannot rebuild MobileNet for input {input_shape}: {e}") from None

    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        values = weights.get(layer.name)
        if values is None:
            raise ImportFailure(
                f"{h5.path}: cannot import it ({reason}); the rebuilt MobileNet's layer {layer.name} "
                "has no weights in the file"
            )
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ImportFailure(
                f"{h5.path}: cannot import it ({reason}); layer {layer.name} has weights {got} in the "
                f"file, the rebuilt MobileNet(alpha={alpha:g}) expects {expected}"
            )
        layer.set_weights(values)
        used.add(layer.name)
    unused = sorted(set(weights) - used)
    if unused:
        raise ImportFailure(
            f"{h5.path}: cannot import it ({reason}); the file has weights MobileNet has no place for: "
            f"{', '.join(unused[:10])}"
        )
    summary = (
        f"rebuilt keras.applications.MobileNet(alpha={alpha:g}, depth_multiplier={depth_multiplier}, "
        f"classes={classes}, weights=None) and loaded the file's weights into its {len(used)} "
        "weighted layers by name"
    )
    return model, summary


def _some(weights, limit=6):
    names = list(weights)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
