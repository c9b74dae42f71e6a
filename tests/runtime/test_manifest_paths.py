"""Every file an artifact manifest names stays inside the artifact folder.

A manifest is user input: an ``edgekit.json`` naming ``../../etc/passwd``, an absolute path, a
Windows ``..\\`` path or a symlink that leaves the folder must be refused when the manifest is read
(``Detector.load``, ``edgekit inspect``), with one line naming the manifest, the entry and the path —
never hashed, listed, loaded or run. The outside files below carry their correct sha256, so only the
path check can stop them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from edgekit.cli import main
from edgekit.errors import ModelFileError
from edgekit.runtime.artifact import MANIFEST_NAME, read_manifest, sha256_file
from edgekit.runtime.detector import Detector

ESCAPES = "leaves the artifact folder"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real (small) exported artifact: model.onnx + edgekit.json."""
    from edgekit.convert.chain import export_artifact
    from edgekit.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", 3, (64, 64)), ("a", "b", "c")).eval()
    out = tmp_path_factory.mktemp("manifest-paths") / "exported"
    export_artifact(model, out)
    return out


@pytest.fixture
def workspace(exported, tmp_path) -> tuple[Path, Path]:
    """(artifact folder, a folder beside it holding a runnable copy of the model outside the artifact)."""
    artifact = Path(shutil.copytree(exported, tmp_path / "artifact"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(artifact / "model.onnx", outside / "model.onnx")
    return artifact, outside


def edit(artifact: Path, change) -> None:
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def point_model_at(artifact: Path, name: str, digest_of: Path) -> None:
    """Make the onnxruntime entry's file ``name`` (listed in 'files' with the sha256 of ``digest_of``)."""
    def change(data):
        data["models"][0]["file"] = name
        data["files"][name] = sha256_file(digest_of)
    edit(artifact, change)


def refused(artifact: Path, *needles: str) -> str:
    with pytest.raises(ModelFileError) as info:
        Detector.load(artifact)
    message = str(info.value)
    assert "\n" not in message
    assert str(artifact / MANIFEST_NAME) in message and ESCAPES in message, message
    for needle in needles:
        assert needle in message, message
    with pytest.raises(ModelFileError, match=ESCAPES):
        read_manifest(artifact)
    return message


# --- the model file ------------------------------------------------------------------------

def test_model_entry_with_dotdot_is_refused_not_run(workspace):
    artifact, outside = workspace
    point_model_at(artifact, "../outside/model.onnx", outside / "model.onnx")
    refused(artifact, "models[0]", "'file'", "'../outside/model.onnx'")


def test_model_entry_with_absolute_path_is_refused(workspace):
    artifact, outside = workspace
    name = str(outside / "model.onnx")
    point_model_at(artifact, name, outside / "model.onnx")
    refused(artifact, "models[0]", repr(name), "absolute")


def test_model_entry_through_a_symlink_leaving_the_folder_is_refused(workspace):
    artifact, outside = workspace
    (artifact / "linked.onnx").symlink_to(outside / "model.onnx")
    point_model_at(artifact, "linked.onnx", outside / "model.onnx")
    refused(artifact, "models[0]", "'linked.onnx'", "symlink")


def test_symlinked_folder_leaving_the_artifact_is_refused(workspace):
    artifact, outside = workspace
    (artifact / "sub").symlink_to(outside, target_is_directory=True)
    point_model_at(artifact, "sub/model.onnx", outside / "model.onnx")
    refused(artifact, "'sub/model.onnx'")


def test_symlink_that_stays_inside_is_accepted(workspace):
    artifact, _ = workspace
    (artifact / "models").mkdir()
    shutil.move(str(artifact / "model.onnx"), artifact / "models" / "real.onnx")
    (artifact / "model.onnx").symlink_to(Path("models") / "real.onnx")
    with Detector.load(artifact) as detector:  # the manifest still names model.onnx
        assert detector.runner.input_specs()[0].shape[-2:] == (64, 64)


@pytest.mark.parametrize("name", ["..\\outside\\model.onnx", "sub\\..\\..\\outside\\model.onnx"])
def test_windows_style_dotdot_is_refused(workspace, name):
    artifact, outside = workspace
    point_model_at(artifact, name, outside / "model.onnx")
    refused(artifact, repr(name).replace("\\\\", "\\")[1:-1])


@pytest.mark.parametrize("name", ["C:\\Windows\\model.onnx", "C:model.onnx", "\\\\server\\share\\model.onnx"])
def test_windows_absolute_and_drive_paths_are_refused(workspace, name):
    artifact, outside = workspace
    point_model_at(artifact, name, outside / "model.onnx")
    refused(artifact, "models[0]")


def test_nul_in_a_name_is_refused(workspace):
    artifact, outside = workspace
    point_model_at(artifact, "model.onnx\x00.txt", outside / "model.onnx")
    refused(artifact, "NUL")


# --- the 'files' map and file-naming options -------------------------------------------------

def test_files_entry_outside_is_refused(workspace):
    artifact, outside = workspace
    edit(artifact, lambda data: data["files"].update({"../../../../etc/passwd": "0" * 64}))
    refused(artifact, "'files'", "'../../../../etc/passwd'")


@pytest.mark.parametrize("key, value, shown", [
    ("bin_file", "../outside/model.ncnn.bin", "'bin_file'"),
    ("engine", "/etc/model.engine", "'engine'"),
    ("build_script", "../../build.sh", "'build_script'"),
    ("companion_files", ["ok.bin", "../outside/model.onnx"], "'companion_files'"),
])
def test_file_naming_options_outside_are_refused(workspace, key, value, shown):
    artifact, _ = workspace
    edit(artifact, lambda data: data["models"][0].setdefault("options", {}).update({key: value}))
    refused(artifact, "models[0]", shown)


def test_non_string_file_option_is_refused(workspace):
    artifact, _ = workspace
    edit(artifact, lambda data: data["models"][0].setdefault("options", {}).update({"companion_files": "model.onnx"}))
    with pytest.raises(ModelFileError, match=r"models\[0\].*'companion_files'.*list"):
        read_manifest(artifact)


def test_names_inside_the_folder_still_read(workspace):
    artifact, _ = workspace
    os.makedirs(artifact / "ncnn")
    edit(artifact, lambda data: data["models"][0].setdefault("options", {}).update(
        {"bin_file": "model.ncnn.bin", "engine": "model_fp16.engine", "build_script": "tensorrt_build.sh",
         "companion_files": ["ncnn/./x.bin"]}))
    assert read_manifest(artifact).models[0].options["engine"] == "model_fp16.engine"


# --- edgekit inspect ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../outside/model.onnx", "ABSOLUTE", "..\\outside\\model.onnx"])
def test_inspect_refuses_with_one_error_line(workspace, name, capsys):
    artifact, outside = workspace
    if name == "ABSOLUTE":
        name = str(outside / "model.onnx")
    point_model_at(artifact, name, outside / "model.onnx")
    code = main(["inspect", str(artifact)])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ESCAPES in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "sha256" not in captured.out  # nothing was listed or hashed before the refusal


def test_inspect_refuses_a_symlink_leaving_the_folder(workspace, capsys):
    artifact, outside = workspace
    (artifact / "linked.onnx").symlink_to(outside / "model.onnx")
    point_model_at(artifact, "linked.onnx", outside / "model.onnx")
    assert main(["inspect", str(artifact)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ESCAPES in err[0]
