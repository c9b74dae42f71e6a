import json

import pytest

from edgekit.errors import SpecError
from edgekit.spec import HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec, load_class_names


def make_spec(**overrides) -> ModelSpec:
    fields = dict(
        family="yolov8", input_size=(160, 192), class_names=("a", "b", "c"),
        head=HeadSpec("dfl", ("p3", "p4", "p5"), {"strides": [8, 16, 32], "reg_max": 16}),
        color_order="BGR", normalization=Normalization(1 / 255, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)),
        resize=ResizeSpec("letterbox", 0), postprocess=PostprocessSpec(0.3, 0.6, True, True, 500, 100),
    )
    fields.update(overrides)
    return ModelSpec(**fields)


def test_json_round_trip_is_exact():
    spec = make_spec()
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.num_classes == 3
    # the JSON is plain data: no code, nothing to evaluate
    assert json.loads(spec.to_json())["head"]["params"]["reg_max"] == 16


def test_file_round_trip(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(make_spec().to_json())
    assert ModelSpec.from_file(path) == make_spec()


@pytest.mark.parametrize("overrides, fragment", [
    ({"input_size": (0, 160)}, "input_size"),
    ({"color_order": "RGBA"}, "color_order"),
    ({"resize": ResizeSpec("crop")}, "resize.mode"),
    ({"class_names": ()}, "class_names"),
    ({"head": HeadSpec("dfl", ())}, "output_names"),
    ({"normalization": Normalization(1.0, (0, 0, 0), (1, 0, 1))}, "std"),
    ({"postprocess": PostprocessSpec(conf_threshold=1.5)}, "thresholds"),
])
def test_invalid_fields_are_named(overrides, fragment):
    with pytest.raises(SpecError, match=fragment):
        make_spec(**overrides)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.pop("head"), "missing required field 'head'"),
    (lambda d: d.update(colour="RGB"), "unknown field"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(input_size=[160]), "input_size"),
    (lambda d: d["head"].pop("kind"), "head must be an object"),
    (lambda d: d.update(normalization={"mean": 3}), "malformed spec"),
])
def test_malformed_dicts_give_one_line_errors(mutate, fragment):
    data = make_spec().to_dict()
    mutate(data)
    with pytest.raises(SpecError, match=fragment) as info:
        ModelSpec.from_dict(data, source="x.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.json")


def test_broken_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"family": "yolov8",')
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_file(bad)
    with pytest.raises(SpecError, match="not found"):
        ModelSpec.from_file(tmp_path / "missing.json")


def test_class_names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("person\n\nbicycle\n  car  \n")
    assert load_class_names(path) == ("person", "bicycle", "car")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SpecError, match="no class names"):
        load_class_names(tmp_path / "empty.txt")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(clas_names=["a"]), "unknown field 'clas_names'; did you mean 'class_names'?"),
    (lambda d: d["postprocess"].update(conf_treshold=0.3),
     "unknown field 'postprocess.conf_treshold'; did you mean 'conf_threshold'?"),
    (lambda d: d["resize"].update(mdoe="letterbox"), "unknown field 'resize.mdoe'; did you mean 'mode'?"),
    (lambda d: d.update(zzz=1), "unknown field 'zzz' (expected only"),  # nothing close: no suggestion
])
def test_unknown_fields_suggest_the_closest_known_one(mutate, message):
    """A typo in a spec file must not silently fall back to a default: one line, with a did you mean."""
    data = make_spec().to_dict()
    mutate(data)
    with pytest.raises(SpecError) as info:
        ModelSpec.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)
