"""The pure-numpy TensorFlow V2 checkpoint reader (igam.tf.reader), on real TF fixtures.

tests/fixtures/tf/*/ were written by tf.compat.v1.train.Saver (make_tf_fixtures.py); each
meta.json lists the variable names TensorFlow saved.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from igam.errors import CheckpointError
from igam.tf.reader import (
    TFCheckpointReader,
    crc32c,
    list_tf_variables,
    mask_crc32c,
    read_tf_checkpoint,
    resolve_checkpoint_prefix,
    unmask_crc32c,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
MODEL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "meta.json").is_file())


def _slow_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_values_and_extension():
    # RFC 3720 (iSCSI) B.4 test vectors and the classic check value
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 1000, 2047, 2048, 2049, 40_000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        whole = crc32c(data)
        if n <= 2049:
            assert whole == _slow_crc32c(data)
        assert crc32c(data[n // 3 :], crc32c(data[: n // 3])) == whole
        assert crc32c(np.frombuffer(data, np.uint8)) == whole
    big = rng.integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    ref = _slow_crc32c(big[:5000])
    ref = crc32c(big[5000:], ref)  # vectorised path extended from a slow-path value
    assert ref == crc32c(big)
    for v in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
        assert unmask_crc32c(mask_crc32c(v)) == v
    assert mask_crc32c(0) == 0xA282EAD8


def test_crc32c_is_vectorised():
    data = np.random.default_rng(1).integers(0, 256, 16 << 20, dtype=np.uint8)
    start = time.perf_counter()
    crc32c(data)
    assert time.perf_counter() - start < 10.0  # ~0.2 s; a pure Python loop takes minutes


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_reads_every_variable_tensorflow_saved(name):
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    values = read_tf_checkpoint(FIXTURES / name)
    assert sorted(values) == sorted(meta["variables"])
    floats = {v.dtype for k, v in values.items() if k != "global_step"}
    assert floats == {np.dtype(meta["dtype"])}
    if "global_step" in values:
        assert values["global_step"].dtype == np.int64 and values["global_step"].shape == ()
    listed = list_tf_variables(FIXTURES / name)
    for k, v in values.items():
        assert listed[k] == (str(v.dtype), v.shape)
        assert v.flags.writeable and np.all(np.isfinite(v))


def test_values_and_layout():
    v = read_tf_checkpoint(FIXTURES / "madry_f32")
    w = v["input/init_conv/DW"]
    assert w.shape == (3, 3, 3, 16)  # HWIO, as TF stores it
    assert v["logit/DW"].shape == (32, 10) and v["logit/biases"].shape == (10,)
    gamma = v["unit_1_0/shared_activation/BatchNorm/gamma"]
    assert np.all((gamma > 0.5) & (gamma < 1.5))  # randomised in U(0.6, 1.4)
    assert np.all(v["unit_3_1/sub2/BatchNorm/moving_variance"] > 0)


def test_all_dtypes():
    ref = np.load(FIXTURES / "dtypes" / "reference.npz")
    reader = TFCheckpointReader(FIXTURES / "dtypes")
    values = reader.read_all()
    assert "s" not in values  # strings are skipped unless asked for
    for key in (
        "f32",
        "f64",
        "f16",
        "i8",
        "u8",
        "i16",
        "i32",
        "i64",
        "b",
        "scalar",
        "empty",
        "big",
    ):
        expected = ref[f"value_{key}"]
        assert values[key].dtype == expected.dtype, key
        assert values[key].shape == expected.shape, key
        np.testing.assert_array_equal(values[key], expected)
    assert values["bf16"].dtype == np.float32
    np.testing.assert_array_equal(values["bf16"], ref["value_bf16"])
    assert reader.entries["bf16"].dtype == "bfloat16"
    with pytest.raises(CheckpointError, match=r"dtypes.*'s' has unsupported dtype string"):
        reader.read("s")
    with pytest.raises(CheckpointError, match="no variable 'nope'"):
        reader.read("nope")


def _copy(tmp_path: Path, name: str = "disc_conv_f32") -> tuple[Path, Path]:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    prefix = resolve_checkpoint_prefix(dst)
    return dst, prefix


def test_folder_prefix_index_and_state_file_resolve_alike(tmp_path):
    folder, prefix = _copy(tmp_path)
    assert prefix == folder / "checkpoint-4700"
    assert resolve_checkpoint_prefix(prefix) == prefix
    assert resolve_checkpoint_prefix(str(prefix) + ".index") == prefix
    assert resolve_checkpoint_prefix(folder / "checkpoint") == prefix
    assert resolve_checkpoint_prefix(str(prefix) + ".data-00000-of-00001") == prefix
    a = read_tf_checkpoint(folder)
    b = read_tf_checkpoint(prefix)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # absolute model_checkpoint_path (TF's default without save_relative_paths)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\n')
    assert resolve_checkpoint_prefix(folder) == prefix
    # an absolute path from another machine: the same base name in this folder
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "/elsewhere/run/checkpoint-4700"\n'
        'all_model_checkpoint_paths: "checkpoint-4700"\n'
    )
    assert resolve_checkpoint_prefix(folder) == prefix
    # latest points to a checkpoint that is gone
    (folder / "checkpoint").write_text('model_checkpoint_path: "checkpoint-9999"\n')
    with pytest.raises(CheckpointError, match=r"checkpoint-9999.*index"):
        resolve_checkpoint_prefix(folder)
    (folder / "checkpoint").write_text("garbage\n")
    with pytest.raises(CheckpointError, match="no model_checkpoint_path"):
        resolve_checkpoint_prefix(folder)
    (folder / "checkpoint").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint state file not found.*pass a prefix"):
        read_tf_checkpoint(folder)
    assert read_tf_checkpoint(prefix).keys() == a.keys()  # the prefix still works


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        read_tf_checkpoint(tmp_path / "nowhere")
    folder, prefix = _copy(tmp_path)
    data = Path(str(prefix) + ".data-00000-of-00001")
    data.unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-4700\.data-00000-of-00001.*not found"):
        read_tf_checkpoint(folder)


def test_truncated_data_file(tmp_path):
    folder, prefix = _copy(tmp_path)
    data = Path(str(prefix) + ".data-00000-of-00001")
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as err:
        read_tf_checkpoint(folder)
    msg = str(err.value)
    assert "\n" not in msg and str(data) in msg and "truncated" in msg


def test_bit_flip_in_data_file_fails_its_crc(tmp_path):
    folder, prefix = _copy(tmp_path)
    data = Path(str(prefix) + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        read_tf_checkpoint(folder)
    msg = str(err.value)
    assert "\n" not in msg and str(data) in msg and "crc32c mismatch" in msg
    # without verification the (corrupt) values load: the check is what caught it
    assert read_tf_checkpoint(folder, verify=False)


@pytest.mark.parametrize("where", ["block", "footer", "truncated"])
def test_corrupt_index(tmp_path, where):
    folder, prefix = _copy(tmp_path)
    index = Path(str(prefix) + ".index")
    raw = bytearray(index.read_bytes())
    if where == "block":
        raw[len(raw) // 3] ^= 0x01
    elif where == "footer":
        raw[-3] ^= 0x40
    else:
        raw = raw[: len(raw) - 7]
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        read_tf_checkpoint(folder)
    msg = str(err.value)
    assert "\n" not in msg and str(index) in msg
    assert ("crc32c" in msg) if where == "block" else ("magic" in msg or "truncated" in msg)
