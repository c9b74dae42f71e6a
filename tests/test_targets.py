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
    ({"nms": "graph"}, "nms 'graph' is not supported"),
])
def test_bad_profiles_name_the_key(extra, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_target("t", {**BASE, **extra}, "t.toml")


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
