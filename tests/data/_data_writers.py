"""Writers for tiny data files in the real formats, built byte by byte from the format specs."""

import gzip
import io
import pickle
import struct

import numpy as np

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path, payload: bytes, gz: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def tiny_mnist_arrays(n_train=12, n_test=7, height=5, width=4, seed=0):
    """uint8 images (N, H, W) covering 0 and 255, and labels 0..9."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, height, width), dtype=np.uint8)
        images[0, 0, 0], images[-1, -1, -1] = 0, 255
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


def write_idx_set(folder, arrays, gz=False):
    """The four IDX files of ``arrays`` in ``folder``; returns {role: path}."""
    gz_of = gz if isinstance(gz, dict) else {role: gz for role in IDX_STEMS}
    return {role: write_file(folder / stem, idx_bytes(arrays[role]), gz_of[role])
            for role, stem in IDX_STEMS.items()}


def cifar_batch_dict(images, labels, str_keys=False):
    batch = {b"batch_label": b"tiny", b"labels": [int(v) for v in labels],
             b"data": np.asarray(images, dtype=np.uint8).reshape(len(labels), -1),
             b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    return batch


def write_cifar_set(folder, per_batch=3, seed=0, protocol=2, str_keys=False):
    """Six tiny batches (5 train + test) in ``folder``; returns {split: (images, labels)}.

    ``protocol`` is a pickle protocol number or ``"py2"`` for the original files' Python 2 form.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names in (("train", CIFAR_TRAIN), ("test", ["test_batch"])):
        images, labels = [], []
        for name in names:
            img = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
            lab = rng.integers(0, 10, size=per_batch)
            batch = cifar_batch_dict(img, lab, str_keys)
            payload = python2_style_pickle(batch) if protocol == "py2" else pickle.dumps(batch, protocol=protocol)
            (folder / name).write_bytes(payload)
            images.append(img)
            labels.append(lab)
        out[split] = (np.concatenate(images), np.concatenate(labels))
    return out


class _Python2StylePickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes (BINSTRING), as the original CIFAR files have."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        # Python 2 code wrote its (byte) str for dtype codes and dict keys alike.
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def python2_style_pickle(obj) -> bytes:
    """Protocol-2 bytes shaped like a Python 2 / NumPy 1.x pickle (``numpy.core`` module names)."""
    buffer = io.BytesIO()
    _Python2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")
