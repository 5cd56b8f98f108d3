"""Labels in `imagenet_class_index.json` form, checked by the rules the service applies
(src/classify/model/labels.rs): a JSON object {"0": [wnid, label], ...} numbered 0..N-1."""
import json

from .failure import ImportFailure


def count(path):
    """The number of classes the labels file names; ImportFailure if the service would refuse it."""
    try:
        with open(path, "rb") as f:
            index = json.load(f)
    except OSError as e:
        raise ImportFailure(f"labels {path}: {e.strerror}") from None
    except ValueError as e:
        raise ImportFailure(f"labels {path} is not valid JSON: {e}") from None
    form = 'of the form {"0": ["n01440764", "tench"], ...}'
    if not isinstance(index, dict) or not index:
        raise ImportFailure(f"labels {path} must be a non-empty JSON object {form}")
    for key, value in index.items():
        if not key.isdigit():
            raise ImportFailure(f"labels {path}: key {key!r} is not a class number ({form})")
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ImportFailure(f"labels {path}: class {key} is not a [wnid, label] pair ({form})")
    numbers = {int(k) for k in index}
    missing = next((i for i in range(len(index)) if i not in numbers), None)
    if missing is not None:
        raise ImportFailure(
            f"labels {path} has no entry for class {missing} (classes must be numbered 0..N-1 without gaps)"
        )
    return len(index)
