from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.targets import TargetError, load_target, parse_target, target_names

REQUIRED = {"intel-cpu", "intel-igpu", "raspberry-pi-5", "rk3588-cpu", "jetson-orin-nano", "jetson-xavier-nx", "onnxruntime-cpu"}


def test_every_shipped_profile_loads():
    assert set(target_names()) >= REQUIRED
    for name in target_names():
        target = load_target(name)
        assert target.description and target.precision in target.precisions
        assert target.backend in {"onnxruntime", "openvino", "ncnn", "tensorrt"}


def test_intel_cpu_profile_values():
    target = load_target("intel-cpu")
    assert (target.backend, target.precision, target.input_size) == ("openvino", "fp32", (640, 640))
    assert target.calibration.method == "mse" and target.backend_options["device"] == "CPU"


def test_unknown_target_suggests_a_close_name():
    with pytest.raises(TargetError, match="unknown target 'intel-cpus'; did you mean 'intel-cpu'"):
        load_target("intel-cpus")


BASE = {"description": "x", "backend": "openvino", "precision": "fp32"}


@pytest.mark.parametrize("extra, fragment", [
    ({"precison": "fp16"}, "unknown key 'precison'; did you mean 'precision'"),
    ({"backend": "openvinoo"}, "did you mean 'openvino'"),
    ({"precision": "fp64"}, "precision 'fp64' is not one of"),
    ({"precisions": ["fp16"]}, "not in its own precisions list"),
    ({"input_size": 300}, "multiple of 32"),
    ({"threads": -1}, "threads must be an integer"),
    ({"calibration": {"methd": "entropy"}}, "unknown key 'calibration.methd'; did you mean 'calibration.method'"),
    ({"calibration": {"method": "kl"}}, "calibration.method 'kl'"),
    ({"nms": "inside"}, r"nms 'inside' is not supported \(expected one of host, graph\)"),
    ({"nms": "graph"}, r"nms \"graph\" is built for tensorrt \(NMS as an engine layer\); backend 'openvino' runs "
                       r"edgekit's host NMS"),
])
def test_bad_profiles_name_the_key(extra, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_target("t", {**BASE, **extra}, "t.toml")


def test_nms_in_the_graph_is_a_tensorrt_choice():
    target = parse_target("t", {**BASE, "backend": "tensorrt", "nms": "graph"}, "t.toml")
    assert target.nms == "graph"
    assert parse_target("t", {**BASE, "backend": "tensorrt"}, "t.toml").nms == "host"


def test_missing_key_and_bad_toml(tmp_path):
    with pytest.raises(TargetError, match="missing required key 'backend'"):
        parse_target("t", {"description": "x", "precision": "fp32"}, "t.toml")
    path = tmp_path / "mine.toml"
    path.write_text("backend = \n")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(path)
    path.write_text('description = "my board"\nbackend = "ncnn"\nprecision = "fp32"\n')
    assert load_target(path).name == "mine"


def test_targets_command_lists_all(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in REQUIRED:
        assert name in out


@pytest.mark.parametrize("extra, fragment", [
    ({"threads": True}, "threads must be an integer, got True"),
    ({"threads": "4"}, "threads must be an integer"),
    ({"batch": 0}, "batch must be an integer >= 1"),
    ({"batch": 4, "max_batch": 2}, r"max_batch \(2\) must be >= batch \(4\)"),
    ({"max_batch": 8, "dynamic_batch": False}, "need a dynamic batch axis"),
    ({"dynamic_batch": "yes"}, "dynamic_batch must be true or false"),
    ({"description": 3}, "description must be a string"),
    ({"calibration": {"images": "300"}}, "calibration.images must be an integer"),
    ({"backend_options": {"devic": "CPU"}}, "unknown key 'backend_options.devic'; did you mean 'backend_options.device'"),
    ({"backend_options": {"device": 0}}, "backend_options.device must be a string"),
    ({"backend_options": {"performance_hint": "FAST"}}, "backend_options.performance_hint 'FAST' is not one of"),
    ({"backend": "ncnn", "backend_options": {"use_vulkn": True}}, "did you mean 'backend_options.use_vulkan'"),
    ({"backend": "ncnn", "backend_options": {"use_vulkan": 1}}, "backend_options.use_vulkan must be true or false"),
    ({"backend": "tensorrt", "backend_options": {"workspace": 1024}}, "did you mean 'backend_options.workspace_mib'"),
])
def test_every_key_is_typed_and_backend_options_are_the_builders(extra, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_target("t", {**BASE, **extra}, "t.toml")


def test_the_batch_keys_give_the_build_its_range():
    static = parse_target("t", BASE, "t.toml")
    assert (static.dynamic_batch, static.batch_range) == (False, (1, 1, 1))
    ranged = parse_target("t", {**BASE, "batch": 2, "max_batch": 8}, "t.toml")
    assert (ranged.dynamic_batch, ranged.batch_range) == (True, (1, 2, 8))     # max_batch > 1: a dynamic axis
    assert parse_target("t", {**BASE, "batch": 4}, "t.toml").batch_range == (1, 4, 4)
    assert parse_target("t", {**BASE, "dynamic_batch": True}, "t.toml").batch_range == (1, 1, 1)


def test_shipped_profiles_use_what_their_builders_declare():
    from edgekit.convert.builders import get_builder_class

    for name in target_names():
        target = load_target(name)
        assert set(target.backend_options) <= set(get_builder_class(target.backend).profile_options), name
    assert load_target("raspberry-pi-5").runtime_options() == {"threads": 4}
    # JetPack 6.0 ships TensorRT 8.6; 10.3 comes with JetPack 6.1 / 6.2
    assert "JetPack 6.0 = TensorRT 8.6" in load_target("jetson-orin-nano").description


def test_profiles_live_at_the_top_of_the_repository():
    from edgekit.targets import profiles_dir

    repo = Path(__file__).resolve().parents[1]
    assert profiles_dir() == repo / "targets" and not (repo / "edgekit" / "targets").exists()
