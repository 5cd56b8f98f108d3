"""What a Keras HDF5 file holds, read with h5py alone: a damaged or foreign file is refused
before TensorFlow is even imported (which takes seconds)."""
import json
import os
import zipfile
from dataclasses import dataclass

import h5py
import numpy as np

from .failure import ImportFailure


@dataclass
class Hdf5Model:
    path: str
    # Who wrote it ("2.1.6", "2.21.0", "3.15.1"), when the file says.
    keras_version: str | None
    # The architecture; weights-only files (`save_weights`) have none.
    model_config: dict | None
    # Weights by layer name, each layer's in the order Keras saved them (kernel, bias; BN: gamma,
    # beta, moving mean, moving variance). Layers without weights are left out.
    layer_weights: dict

    def input_shape(self):
        """(height, width, channels) of the InputLayer in model_config, if it names one."""
        for layer in (self.model_config or {}).get("config", {}).get("layers", []):
            if layer.get("class_name") == "InputLayer":
                config = layer.get("config", {})
                shape = config.get("batch_input_shape") or config.get("batch_shape")
                if shape and len(shape) == 4:
                    return tuple(shape[1:])
        return None


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def read(path):
    if not os.path.isfile(path):
        raise ImportFailure(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        hint = (
            " (it is a zip archive: a Keras 3 `.keras` file? this tool imports legacy HDF5 `.h5` files)"
            if zipfile.is_zipfile(path)
            else " (truncated, or not HDF5 at all)"
        )
        raise ImportFailure(f"{path} is not a readable HDF5 file{hint}: {e}") from None
    try:
        with f:
            return _read_open(path, f)
    except ImportFailure:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ImportFailure(f"{path} is a damaged Keras HDF5 file: {type(e).__name__}: {e}") from None


def _read_open(path, f):
    config = f.attrs.get("model_config")
    if config is not None:
        try:
            config = json.loads(_text(config))
        except ValueError as e:
            raise ImportFailure(f"{path}: its model_config is not JSON: {e}") from None
    # A whole-model file keeps the weights in /model_weights; a save_weights file at the root.
    group = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in group.attrs:
        raise ImportFailure(
            f"{path} holds no Keras weights (no layer_names attribute): not a Keras model or weights "
            "file in the legacy HDF5 layout"
        )
    version = group.attrs.get("keras_version", f.attrs.get("keras_version"))
    weights = {}
    for name in (_text(n) for n in group.attrs["layer_names"]):
        layer = group[name]
        values = [np.asarray(layer[_text(w)]) for w in layer.attrs.get("weight_names", [])]
        if values:
            weights[name] = values
    if not weights:
        raise ImportFailure(f"{path} holds a Keras file without a single weight")
    return Hdf5Model(path, _text(version) if version is not None else None, config, weights)
