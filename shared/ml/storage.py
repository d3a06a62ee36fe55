"""The models' one storage format: an ``.npz`` read with pickles disabled (numeric arrays and a JSON metadata
array), and optionally the scikit-learn object as skops bytes, loaded only on request and only if it holds
nothing but the types a model declares. Nothing here ever unpickles; skops is imported only when used."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

META = "meta"
SKOPS = "sklearn_skops"


def pack(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], sklearn_object: Any = None) -> bytes:
    """The bytes of a model: ``arrays``, the JSON ``meta``, and ``sklearn_object`` as skops bytes when given
    and skops is installed."""
    out = dict(arrays)
    out[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    if sklearn_object is not None:
        try:
            # lazy: skops (and scikit-learn with it) only when a model is saved with its sklearn object
            import skops.io as sio
        except ImportError:
            pass
        else:
            out[SKOPS] = np.frombuffer(sio.dumps(sklearn_object), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` of ``pack`` output (the skops bytes, if any, among the arrays)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if META not in arrays:
        raise ValueError("not a model file: no metadata")
    return arrays, json.loads(arrays.pop(META).tobytes().decode())


def prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays stored under ``prefix`` (e.g. ``flat_``), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def sklearn_object(arrays: Mapping[str, np.ndarray], trusted: frozenset[str]) -> Any:
    """The scikit-learn object stored with ``pack`` (None without one, or without skops), refusing any type
    beyond skops' defaults that is not in ``trusted``."""
    if SKOPS not in arrays:
        return None
    try:
        # lazy: skops (and scikit-learn with it) only when the sklearn object is asked for
        import skops.io as sio
    except ImportError:
        return None
    blob = arrays[SKOPS].tobytes()
    untrusted = set(sio.get_untrusted_types(data=blob))
    if not untrusted <= trusted:
        raise ValueError(f"untrusted types in the model: {sorted(untrusted - trusted)}")
    return sio.loads(blob, trusted=sorted(untrusted))
