"""The restricted unpickler (edgekit.models.imports.pickled): module-pickling checkpoints read as inert data.

Oracle for the values: a module pickled by torch.save from a package made up in the test (so its class is not
importable by edgekit) must give back exactly ``module.state_dict()``: the same keys in the same order, the same
dtypes (float16 kept) and bit-identical values, including views with offsets and strides into shared storage.
Crafted files must be refused with one line and must never run anything.
"""

from __future__ import annotations

import collections
import os
import sys
import textwrap
import warnings
import zipfile

import pytest
import torch
from torch import nn

from edgekit.errors import ModelFileError
from edgekit.models.imports.pickled import PickledObject, is_module_pickle, load_pickled_checkpoint
from tests.conftest import SHARED_DIR

ULTRALYTICS_DIR = SHARED_DIR / "models" / "ultralytics"


@pytest.fixture(scope="module")
def fake_upstream(tmp_path_factory):
    """A package ``fakeupstream`` on sys.path with a small nn.Module; removed again afterwards."""
    root = tmp_path_factory.mktemp("fakeupstream_pkg")
    package = root / "fakeupstream"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        from torch import nn

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, bias=False)
                self.bn = nn.BatchNorm2d(4)
                self.f, self.i, self.note = -1, 0, "plain attribute"

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = nn.Sequential(Block(), nn.SiLU(), nn.Upsample(scale_factor=2.0))
                self.register_buffer("scratch", __import__("torch").zeros(3), persistent=False)
    '''))
    sys.path.insert(0, str(root))
    import fakeupstream

    yield fakeupstream
    sys.path.remove(str(root))
    sys.modules.pop("fakeupstream", None)


def test_a_pickled_module_reads_back_as_its_exact_state_dict(fake_upstream, tmp_path):
    torch.manual_seed(0)
    model = fake_upstream.Model().half()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    path = tmp_path / "model.pt"
    torch.save({"model": model, "epoch": 3, "train_args": {"imgsz": 320}}, path)

    assert is_module_pickle(path)
    checkpoint = load_pickled_checkpoint(path)
    pickled = checkpoint.payload["model"]
    assert isinstance(pickled, PickledObject) and pickled.is_module
    assert pickled.class_name == "fakeupstream.Model"
    assert "fakeupstream.Block" in checkpoint.class_names
    assert checkpoint.payload["train_args"] == {"imgsz": 320} and checkpoint.payload["epoch"] == 3

    expected = model.state_dict()
    actual = pickled.state_dict()
    assert list(actual) == list(expected)  # the non-persistent buffer is left out, as nn.Module does
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key
    block = pickled.children["model"].children["0"]
    assert block.attrs["f"] == -1 and block.attrs["note"] == "plain attribute"
    assert [path for path, _ in pickled.named_modules()] == [path for path, _ in model.named_modules()]


def test_views_with_offset_and_stride_into_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float32)
    module = nn.Module()
    module.register_buffer("a", base[4:16].view(3, 4).t())  # offset 4, strides (1, 4)
    module.register_buffer("b", base[::5])                  # stride 5, same storage
    path = tmp_path / "views.pt"
    torch.save({"model": module}, path)
    state = load_pickled_checkpoint(path).payload["model"].state_dict()
    assert torch.equal(state["a"], base[4:16].view(3, 4).t())
    assert torch.equal(state["b"], base[::5])


def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class CallsEval:
        def __reduce__(self):
            return (eval, ("__import__('os').getcwd()",))

    path = tmp_path / "evil.pt"
    torch.save({"model": RunsACommand(), "x": CallsEval()}, path)
    with pytest.raises(ModelFileError) as caught:
        load_pickled_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "could execute code" in message and "nothing was run" in message
    assert "system" in message and "builtin__.eval" in message  # every offending global is named
    assert not marker.exists()


def test_a_tensor_reading_past_its_storage_is_refused(tmp_path):
    storage_owner = torch.arange(20, dtype=torch.float32)

    class PastTheEnd:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (storage_owner.storage(), 15, (10,), (1,), False, collections.OrderedDict()))

    path = tmp_path / "past_end.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, and the typed form is what checkpoints hold
        torch.save({"model": PastTheEnd()}, path)
    with pytest.raises(ModelFileError, match="reads past the end of its storage"):
        load_pickled_checkpoint(path)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.97])
def test_truncated_files_give_one_line(fake_upstream, tmp_path, cut):
    whole = tmp_path / "whole.pt"
    torch.save({"model": fake_upstream.Model()}, whole)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelFileError) as caught:
        load_pickled_checkpoint(truncated)
    assert "\n" not in str(caught.value) and str(truncated) in str(caught.value)


def test_a_storage_shorter_than_declared_is_refused(fake_upstream, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"model": fake_upstream.Model()}, whole)
    shortened = tmp_path / "short.pt"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(shortened, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if "/data/" in info.filename and len(data) > 8:
                data = data[: len(data) // 2]
            target.writestr(info, data)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_pickled_checkpoint(shortened)


def test_not_a_zip_and_missing_files(tmp_path):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02}q\x00.")  # a bare (legacy) pickle, not a torch zip archive
    with pytest.raises(ModelFileError, match="expected a torch zip checkpoint"):
        load_pickled_checkpoint(legacy)
    with pytest.raises(ModelFileError, match="not found"):
        load_pickled_checkpoint(tmp_path / "missing.pt")
    assert not is_module_pickle(tmp_path / "missing.pt")


def test_a_plain_state_dict_is_not_a_module_pickle(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), path)
    assert not is_module_pickle(path)


@pytest.mark.skipif(not ULTRALYTICS_DIR.is_dir(), reason="../shared/models/ultralytics is not present")
@pytest.mark.parametrize("name, model_class, tensors", [
    ("yolov5n.pt", "models.yolo.Model", 349),
    ("yolov8n-coco8.pt", "ultralytics.nn.tasks.DetectionModel", 355),
    ("yolo11n-coco8.pt", "ultralytics.nn.tasks.DetectionModel", 499),
    ("yolo26n-coco8.pt", "ultralytics.nn.tasks.DetectionModel", 708),
])
def test_the_real_upstream_files_read_as_data(name, model_class, tensors):
    checkpoint = load_pickled_checkpoint(ULTRALYTICS_DIR / name)
    model = checkpoint.payload["model"]
    assert model.class_name == model_class
    state = model.state_dict()
    assert len(state) == tensors
    assert next(iter(state)) == "model.0.conv.weight"
    assert state["model.0.conv.weight"].dtype == torch.float16
    assert all(torch.isfinite(t.float()).all() for t in state.values())
    assert isinstance(model.attrs["yaml"], dict)
