"""What the service feeds and reads (src/classify/model/engine.rs): one float32 input
[N,224,224,3] (RGB scaled x/127.5-1), one output [N,C] of softmax probabilities, C = the number
of labels. Checked before anything is written, so a model the service would refuse (or, worse,
serve wrongly) never becomes a model directory."""
from dataclasses import dataclass

import numpy as np

from .failure import ImportFailure

SIDE = 224
# Softmax rows sum to 1 up to float32 rounding over C terms; logits or sigmoids are far off.
SUM_TOLERANCE = 1e-3


@dataclass
class Interface:
    classes: int
    # A small batch in the service's input range and the Keras model's answer to it, for the
    # export's own check.
    probe: np.ndarray
    expected: np.ndarray


def _shape(tensor):
    return "[" + ",".join("N" if d is None else str(d) for d in tensor.shape) + "]"


def check(model, labels_count, labels_path):
    if len(model.inputs) != 1:
        raise ImportFailure(f"the model has {len(model.inputs)} inputs; the service feeds exactly one")
    (inp,) = model.inputs
    if tuple(inp.shape[1:]) != (SIDE, SIDE, 3) or len(inp.shape) != 4:
        raise ImportFailure(
            f"the model's input is {_shape(inp)}; the service feeds [N,{SIDE},{SIDE},3] "
            "(224x224 RGB, scaled x/127.5-1)"
        )
    if str(inp.dtype) != "float32":
        raise ImportFailure(f"the model's input is {inp.dtype}; the service feeds float32")
    if len(model.outputs) != 1:
        raise ImportFailure(f"the model has {len(model.outputs)} outputs; the service reads exactly one")
    (out,) = model.outputs
    if len(out.shape) != 2 or out.shape[-1] is None:
        raise ImportFailure(f"the model's output is {_shape(out)}; the service reads [N,C] class probabilities")
    classes = int(out.shape[-1])
    if classes != labels_count:
        raise ImportFailure(
            f"the model has {classes} outputs but the labels ({labels_path}) have {labels_count} entries"
        )
    # Fixed seed: the same file always gets the same probe, so import.json is reproducible.
    probe = np.random.default_rng(224).uniform(-1.0, 1.0, (2, SIDE, SIDE, 3)).astype(np.float32)
    expected = np.asarray(model(probe, training=False))
    sums = expected.sum(axis=1)
    if (expected < 0).any() or np.abs(sums - 1).max() > SUM_TOLERANCE:
        raise ImportFailure(
            "the model's output is not a softmax: on a probe batch its rows sum to "
            f"{', '.join(f'{s:.4g}' for s in sums)} (min value {expected.min():.4g}); the service "
            "reports outputs as probabilities"
        )
    return Interface(classes, probe, expected)
