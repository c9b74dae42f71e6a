"""Safe checkpoint loading: refuses code-carrying pickles without running them, and reports
damaged files and key/shape mismatches in one line naming the file and the first bad key."""

from __future__ import annotations

import os
import pickle
import shlex
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ModelFileError
from edgekit.models.checkpoint import load_state_dict_strict, safe_torch_load

posix_only = pytest.mark.skipif(os.name != "posix", reason="payload uses a POSIX shell command")


class _ShellPayload:
    """Unpickling this calls os.system(command): the classic malicious-checkpoint trick."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _HarmlessConfig:
    """A plain user class: not code-executing by itself, but still outside the allowlist."""

    def __init__(self) -> None:
        self.depth = 3


class TinyNet(nn.Module):
    """Keys in order: stem.weight, stem.bias, bn.{weight,bias,running_mean,running_var,num_batches_tracked}, head.{weight,bias}."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)


def _seeded_tiny(seed: int, width: int = 4) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(width)
    with torch.no_grad():  # non-default BN statistics, so a skipped buffer copy would show
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.num_batches_tracked.fill_(17)
    return net


def _assert_same_tensors(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = module.state_dict()
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


# --- safe_torch_load: good files ------------------------------------------------------------------


@pytest.mark.parametrize("legacy_format", [False, True])
def test_loads_a_plain_state_dict(tmp_path: Path, legacy_format: bool) -> None:
    source = _seeded_tiny(0).state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(source, path, _use_new_zipfile_serialization=not legacy_format)
    loaded = safe_torch_load(str(path))
    assert list(loaded) == list(source)
    for key in source:
        assert torch.equal(loaded[key], source[key])
        assert loaded[key].device.type == "cpu"


# --- safe_torch_load: code-carrying pickles are refused and never run -----------------------------


def _write_torch_save(path: Path, payload: object) -> None:
    torch.save({"weight": torch.zeros(3), "extra": [payload]}, path)


def _write_torch_save_protocol_4(path: Path, payload: object) -> None:
    torch.save({"weight": torch.zeros(3), "extra": [payload]}, path, pickle_protocol=4)


def _write_legacy_torch_save(path: Path, payload: object) -> None:
    torch.save({"weight": torch.zeros(3), "extra": [payload]}, path, _use_new_zipfile_serialization=False)


def _raw_pickle_writer(protocol: int):
    def write(path: Path, payload: object) -> None:
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return write


MALICIOUS_WRITERS = {
    "torch.save": _write_torch_save,
    "torch.save-protocol-4": _write_torch_save_protocol_4,
    "torch.save-legacy-format": _write_legacy_torch_save,
    "raw-pickle-protocol-0": _raw_pickle_writer(0),
    "raw-pickle-protocol-2": _raw_pickle_writer(2),
    "raw-pickle-protocol-4": _raw_pickle_writer(4),  # STACK_GLOBAL + FRAME, which torch refuses by opcode
    "raw-pickle-protocol-5": _raw_pickle_writer(5),
}


@posix_only
def test_payload_really_executes_under_plain_pickle(tmp_path: Path) -> None:
    # Proves the side-effect check below is live: the same payload, unpickled unsafely, runs.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_ShellPayload(f"touch {shlex.quote(str(marker))}")))
    assert marker.exists()


@posix_only
@pytest.mark.parametrize("writer", list(MALICIOUS_WRITERS), ids=list(MALICIOUS_WRITERS))
def test_refuses_pickle_that_would_run_code(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    MALICIOUS_WRITERS[writer](path, _ShellPayload(f"touch {shlex.quote(str(marker))}"))
    with pytest.raises(ModelFileError) as caught:
        safe_torch_load(path)
    message = str(caught.value)
    assert not marker.exists(), "the payload ran"
    assert message.startswith(f"refused to unpickle {path}: it references ")
    assert ".system which could execute code" in message  # posix.system on Linux, nt.system on Windows
    assert message.endswith("edgekit only loads tensors and plain containers")
    assert "\n" not in message
    assert "weights_only" not in message  # never suggests the unsafe fallback


def test_refuses_non_allowlisted_class_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "config.pt"
    torch.save({"weight": torch.ones(2), "config": _HarmlessConfig()}, path)
    with pytest.raises(ModelFileError, match=r"refused to unpickle .*config\.pt: it references \S*_HarmlessConfig "):
        safe_torch_load(path)


def test_pickle_protocol_4_checkpoint_loads_or_is_refused_with_a_fix(tmp_path: Path) -> None:
    # torch's weights-only unpickler (2.x) does not read protocol-4 FRAME opcodes, even around
    # plain tensors; if a later torch does, the file must simply load correctly.
    source = {"weight": torch.arange(6.0)}
    path = tmp_path / "protocol4.pt"
    torch.save(source, path, pickle_protocol=4)
    try:
        loaded = safe_torch_load(path)
    except ModelFileError as error:
        assert str(error).startswith(f"refused to unpickle {path}: it uses pickle FRAME")
        assert "pickle_protocol=2" in str(error)
    else:
        assert torch.equal(loaded["weight"], source["weight"])


# --- safe_torch_load: damaged or foreign files ----------------------------------------------------


@pytest.mark.parametrize("keep_fraction", [0.5, 0.9])
def test_truncated_checkpoint(tmp_path: Path, keep_fraction: float) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"weight": torch.arange(4096, dtype=torch.float32)}, whole)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(ModelFileError) as caught:
        safe_torch_load(truncated)
    assert str(caught.value) == f"{truncated} is truncated or corrupt (not a readable torch zip archive)"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match=r"noise\.pt is truncated or corrupt"):
        safe_torch_load(path)


def test_zip_that_is_not_a_torch_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelFileError, match=r"notes\.zip is truncated or corrupt"):
        safe_torch_load(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.pt: file is empty"):
        safe_torch_load(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(ModelFileError) as caught:
        safe_torch_load(path)
    assert str(caught.value) == f"{path}: checkpoint file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a regular file"):
        safe_torch_load(tmp_path)


# --- load_state_dict_strict -------------------------------------------------------------------


def test_strict_load_copies_every_tensor() -> None:
    source = _seeded_tiny(0).state_dict()
    target = _seeded_tiny(1)
    load_state_dict_strict(target, source, "tiny.pt")
    _assert_same_tensors(target, source)


def test_missing_keys_name_the_first_in_model_order() -> None:
    source = _seeded_tiny(0).state_dict()
    del source["head.weight"], source["stem.bias"]
    with pytest.raises(ModelFileError) as caught:
        load_state_dict_strict(TinyNet(), source, "tiny.pt")
    assert str(caught.value) == "tiny.pt: checkpoint lacks key 'stem.bias' expected by TinyNet (and 1 more)"


def test_single_missing_key_has_no_count() -> None:
    source = _seeded_tiny(0).state_dict()
    del source["bn.running_var"]
    with pytest.raises(ModelFileError) as caught:
        load_state_dict_strict(TinyNet(), source, "tiny.pt")
    assert str(caught.value) == "tiny.pt: checkpoint lacks key 'bn.running_var' expected by TinyNet"


def test_unexpected_keys_name_the_first_in_checkpoint_order() -> None:
    source = _seeded_tiny(0).state_dict()
    source["neck.weight"] = torch.zeros(1)
    source["aux.bias"] = torch.zeros(1)
    with pytest.raises(ModelFileError) as caught:
        load_state_dict_strict(TinyNet(), source, "tiny.pt")
    assert str(caught.value) == "tiny.pt: checkpoint has key 'neck.weight' not in TinyNet (and 1 more)"


def test_renamed_key_reports_both_sides() -> None:
    source = _seeded_tiny(0).state_dict()
    source["classifier.weight"] = source.pop("head.weight")
    with pytest.raises(ModelFileError) as caught:
        load_state_dict_strict(TinyNet(), source, "tiny.pt")
    assert str(caught.value) == ("tiny.pt: checkpoint lacks key 'head.weight' expected by TinyNet; "
                                 "checkpoint has key 'classifier.weight' not in TinyNet")


def test_shape_mismatch_names_key_and_both_shapes_and_leaves_model_untouched() -> None:
    source = _seeded_tiny(0, width=4).state_dict()
    target = _seeded_tiny(1, width=8)
    before = {key: tensor.clone() for key, tensor in target.state_dict().items()}
    with pytest.raises(ModelFileError) as caught:
        load_state_dict_strict(target, source, "tiny.pt")
    assert str(caught.value) == "tiny.pt: key 'stem.weight' has shape (4, 3, 3, 3) in the checkpoint but (8, 3, 3, 3) in the model"
    _assert_same_tensors(target, before)


def test_shape_mismatch_of_a_vector() -> None:
    source = _seeded_tiny(0).state_dict()
    source["head.bias"] = torch.zeros(3)
    with pytest.raises(ModelFileError, match=r"key 'head\.bias' has shape \(3,\) in the checkpoint but \(2,\) in the model"):
        load_state_dict_strict(TinyNet(), source, "tiny.pt")


def test_data_parallel_prefix_is_stripped() -> None:
    source = _seeded_tiny(0).state_dict()
    prefixed = OrderedDict((f"module.{key}", tensor) for key, tensor in source.items())
    target = _seeded_tiny(1)
    load_state_dict_strict(target, prefixed, "dp.pt")
    _assert_same_tensors(target, source)


def test_prefix_on_only_some_keys_is_a_mismatch() -> None:
    source = _seeded_tiny(0).state_dict()
    source["module.stem.weight"] = source.pop("stem.weight")
    with pytest.raises(ModelFileError, match="lacks key 'stem.weight'"):
        load_state_dict_strict(TinyNet(), source, "dp.pt")


def test_model_whose_own_keys_start_with_module_keeps_them() -> None:
    wrapper = nn.Sequential()
    wrapper.add_module("module", nn.Linear(2, 2))
    source = {"module.weight": torch.eye(2), "module.bias": torch.ones(2)}
    load_state_dict_strict(wrapper, source, "wrapped.pt")
    _assert_same_tensors(wrapper, source)


@pytest.mark.parametrize("wrapper_key", ["state_dict", "model"])
def test_state_dict_nested_under_a_wrapper_key(wrapper_key: str) -> None:
    source = _seeded_tiny(0).state_dict()
    checkpoint = {"epoch": 12, "optimizer": {"lr": 0.1}, wrapper_key: source}
    target = _seeded_tiny(1)
    load_state_dict_strict(target, checkpoint, "train.pt")
    _assert_same_tensors(target, source)


@pytest.mark.parametrize("checkpoint", [{"model": {"depth": 3}, "epoch": 1}, {"weights": [torch.zeros(1)]}, [torch.zeros(1)]],
                         ids=["model-not-tensors", "no-wrapper-key", "list"])
def test_things_that_are_not_state_dicts(checkpoint) -> None:
    with pytest.raises(ModelFileError, match=r"^train\.pt: expected a state_dict"):
        load_state_dict_strict(TinyNet(), checkpoint, "train.pt")


def test_missing_batchnorm_step_counter_is_tolerated() -> None:
    source = _seeded_tiny(0).state_dict()
    del source["bn.num_batches_tracked"]
    target = _seeded_tiny(1)
    counter_before = target.bn.num_batches_tracked.clone()
    load_state_dict_strict(target, source, "old.pt")
    for key, tensor in source.items():
        assert torch.equal(target.state_dict()[key], tensor), key
    assert torch.equal(target.bn.num_batches_tracked, counter_before)


def test_missing_step_counter_of_a_non_batchnorm_buffer_is_still_missing() -> None:
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("num_batches_tracked", torch.tensor(0))

    with pytest.raises(ModelFileError, match="lacks key 'num_batches_tracked'"):
        load_state_dict_strict(Counter(), {"other": torch.zeros(1)}, "x.pt")


def test_end_to_end_data_parallel_training_checkpoint(tmp_path: Path) -> None:
    source = _seeded_tiny(0).state_dict()
    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "state_dict": OrderedDict((f"module.{k}", v) for k, v in source.items())}, path)
    target = _seeded_tiny(1)
    load_state_dict_strict(target, safe_torch_load(path), path.name)
    _assert_same_tensors(target, source)
