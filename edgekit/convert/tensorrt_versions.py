"""What each TensorRT version accepts, as data: trtexec flags, precision paths, DLA, the calibration-cache header.

One table (:data:`VERSIONS`), no if/elif chains over versions: the ``trtexec`` command generator
(:func:`trtexec_command`), the build script (``convert/builders/tensorrt.py``), ``edgekit build-engine``
(``convert/tensorrt_engine.py``) and the lints in the tests all read it. Imports neither torch nor onnx:
``edgekit build-engine`` runs it on the Jetson.

Sources (read, not guessed; re-check them when a row is added):

- trtexec 8.5's ``--help`` (the one whose ``--preview`` lists ``fasterDynamicShapes0805``): ``--onnx``,
  ``--saveEngine``, ``--minShapes/--optShapes/--maxShapes``, ``--memPoolSize=workspace:<MiB>``, ``--fp16``,
  ``--int8``, ``--calib``, ``--noTF32``, ``--timingCacheFile``, ``--useDLACore``, ``--allowGPUFallback`` and
  ``--buildOnly`` to stop after the build; trtexec 8.6's ``--help`` (with ``--maxAuxStreams``) names that
  ``--skipInference``.
- "Migrating trtexec Usage from TensorRT 8.x to 10.x" (TensorRT docs): ``--workspace``, ``--maxBatch``,
  ``--minTiming``, ``--buildOnly`` … removed; ``--memPoolSize=workspace:`` stays; ``--stronglyTyped`` exists.
- "Migrating trtexec Usage from TensorRT 10.x to 11.x" (TensorRT 11.0 / 11.4 docs): ``--fp16``, ``--int8``,
  ``--bf16``, ``--fp8``, ``--int4``, ``--best`` and ``--calib`` removed (every network is strongly typed:
  fp16 comes from an fp16 ONNX, int8 from Q/DQ); ``--stronglyTyped`` no longer needed. The Python API lost
  ``BuilderFlag.FP16/INT8``, ``OBEY_PRECISION_CONSTRAINTS``, ``IBuilderConfig.int8_calibrator`` and the
  calibrators. DLA: "not supported in TensorRT 11.4.0" for DriveOS/JetPack (Thor has none).
- The banner every trtexec prints first: ``&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec …``;
  the number is ``NV_TENSORRT_VERSION``: ``major*1000 + minor*100 + patch`` up to 9.x, ``major*10000 +
  minor*100 + patch`` from 10.0 (``v100300``). The calibration cache header carries the same number
  (``TRT-8601-EntropyCalibration2``, ``TRT-100300-EntropyCalibration2``); TensorRT refuses a cache whose
  header names another version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import EdgekitError


class TensorRtVersionError(EdgekitError):
    """A TensorRT version edgekit has no build recipe for, or a malformed version string."""


@dataclass(frozen=True)
class TrtFamily:
    """One row of the table: the TensorRT releases that take the same build recipe.

    flags: every trtexec flag (the part before ``=``) edgekit may emit for this family; the lint checks
    each generated command against it. fp16_flags / int8_flags: the precision switches (empty on 11.x:
    precision comes from the ONNX itself). fp16_onnx: "fp32" (the builder lowers the fp32 ONNX with
    ``--fp16``) or "fp16" (a strongly typed fp16 ONNX edgekit writes). int8_weights: how the Q/DQ ONNX
    carries weights: "float_qdq" (float initializer -> Q -> DQ, what the 8.x parser reads) or
    "int8_dq" (int8 initializer -> DQ, 10.x+). has_dla: DLA cores can be requested. implicit_int8: a
    calibration cache (``--calib``) can be used (DLA's int8 path on <= 10). build_only_flag: stop after
    saving the engine. python_builder_flags: the ``trt.BuilderFlag`` members edgekit's Python build uses.
    """

    name: str
    jetpack: str
    flags: frozenset[str]
    fp16_flags: tuple[str, ...]
    int8_flags: tuple[str, ...]
    fp16_onnx: str
    int8_weights: str
    has_dla: bool
    implicit_int8: bool
    build_only_flag: str
    python_builder_flags: frozenset[str]


_COMMON = frozenset({"--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes", "--memPoolSize",
                     "--timingCacheFile", "--noTF32"})
_DLA = frozenset({"--useDLACore", "--allowGPUFallback"})

#: the table; keys are (major, minor) lower bounds, looked up by :func:`family_for`
VERSIONS: dict[tuple[int, int], TrtFamily] = {
    (8, 5): TrtFamily("8.5", "JetPack 5.1 (L4T r35)",
                      _COMMON | _DLA | {"--fp16", "--int8", "--calib", "--buildOnly"},
                      ("--fp16",), ("--int8", "--fp16"), "fp32", "float_qdq", True, True, "--buildOnly",
                      frozenset({"FP16", "INT8", "GPU_FALLBACK", "TF32"})),
    (8, 6): TrtFamily("8.6", "JetPack 6.0 (L4T r36.2/36.3)",
                      _COMMON | _DLA | {"--fp16", "--int8", "--calib", "--skipInference"},
                      ("--fp16",), ("--int8", "--fp16"), "fp32", "float_qdq", True, True, "--skipInference",
                      frozenset({"FP16", "INT8", "GPU_FALLBACK", "TF32"})),
    (10, 0): TrtFamily("10.x", "JetPack 6.1/6.2 (L4T r36.4+)",
                       _COMMON | _DLA | {"--fp16", "--int8", "--calib", "--skipInference", "--stronglyTyped"},
                       ("--fp16",), ("--int8", "--fp16"), "fp32", "int8_dq", True, True, "--skipInference",
                       frozenset({"FP16", "INT8", "GPU_FALLBACK", "TF32"})),
    (11, 0): TrtFamily("11.x", "JetPack 7 (L4T r38, Jetson Thor)",
                       _COMMON | {"--skipInference"},
                       (), (), "fp16", "int8_dq", False, False, "--skipInference",
                       frozenset({"TF32"})),
}
#: flags no TensorRT 11 trtexec accepts (the migration guide's list): the lint refuses them by name
REMOVED_IN_11 = frozenset({"--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best", "--calib"})
#: flags TensorRT 10 removed (8.x -> 10.x migration guide)
REMOVED_IN_10 = frozenset({"--workspace", "--maxBatch", "--batch", "--minTiming", "--buildOnly", "--explicitBatch",
                           "--uff", "--model", "--deploy", "--output"})


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def number(self) -> int:
        """``NV_TENSORRT_VERSION`` as trtexec prints it and the calibration cache header carries it."""
        if self.major >= 10:
            return self.major * 10000 + self.minor * 100 + self.patch
        return self.major * 1000 + self.minor * 100 + self.patch


def parse_version(text: str) -> TrtVersion:
    """``"8.6.1"``, ``"10.3.0.30"``, ``"8601"`` / ``"v100300"`` (trtexec's number) or a whole trtexec banner."""
    text = str(text).strip()
    banner = re.search(r"\[TensorRT v(\d+)\]", text)
    if banner:
        text = banner.group(1)
    dotted = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*(?:\S*)", text)
    if dotted:
        return TrtVersion(int(dotted.group(1)), int(dotted.group(2)), int(dotted.group(3) or 0))
    number = re.fullmatch(r"v?(\d{4,6})", text)
    if number:
        value = int(number.group(1))
        if value >= 100000:  # 10.x on: major*10000 + minor*100 + patch
            return TrtVersion(value // 10000, value // 100 % 100, value % 100)
        return TrtVersion(value // 1000, value // 100 % 10, value % 100)
    raise TensorRtVersionError(f"cannot read a TensorRT version from {text[:80]!r} "
                               "(expected e.g. 8.6.1, 10.3.0 or trtexec's [TensorRT v8601])")


def family_for(version: TrtVersion | str) -> TrtFamily:
    """The build recipe for ``version``; TensorRtVersionError below 8.5 or above the newest known major."""
    version = parse_version(version) if isinstance(version, str) else version
    keys = sorted(k for k in VERSIONS if k <= (version.major, version.minor))
    newest = max(VERSIONS)
    if not keys or version.major > newest[0]:
        known = ", ".join(f.name for f in VERSIONS.values())
        raise TensorRtVersionError(f"TensorRT {version}: edgekit builds engines for TensorRT {known} only")
    return VERSIONS[keys[-1]]


def calibration_header(version: TrtVersion | str) -> str:
    version = parse_version(version) if isinstance(version, str) else version
    return f"TRT-{version.number}-EntropyCalibration2"


@dataclass(frozen=True)
class BuildPlan:
    """What one engine build needs, independent of how it is run (trtexec or the Python API).

    onnx: the ONNX file to parse (relative to the artifact). input_name / input_shape: [N, C, H, W] with
    N the static batch (ignored when dynamic). dynamic: the ONNX's batch axis is symbolic; then
    min/opt/max batch are 1 / ``opt_batch`` / ``max_batch``. tf32: allow TF32 (False = fp32 parity).
    dla_core: None, or the DLA core to run on (with GPU fallback). calib_cache: a TensorRT calibration
    cache (implicit int8, DLA only) or None. timing_cache: the timing cache file (re-used across builds).
    """

    onnx: str
    engine: str
    precision: str
    input_name: str
    input_shape: tuple[int, int, int, int]
    dynamic: bool = False
    opt_batch: int = 1
    max_batch: int = 1
    tf32: bool = False
    dla_core: int | None = None
    calib_cache: str | None = None
    timing_cache: str | None = "timing.cache"
    workspace_mib: int = 1024

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        """(min, opt, max) of the input when the batch axis is dynamic, else None (the ONNX's own shape)."""
        if not self.dynamic:
            return None
        _, c, h, w = self.input_shape
        return (1, c, h, w), (self.opt_batch, c, h, w), (self.max_batch, c, h, w)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(plan: BuildPlan, version: TrtVersion | str) -> list[str]:
    """The trtexec argv (without the program) for ``plan`` on ``version``: only flags that version accepts.

    Raises TensorRtVersionError when the plan needs what the version lacks (DLA on 11.x, a calibration
    cache where ``--calib`` was removed, fp16 from an fp32 ONNX on 11.x).
    """
    family = family_for(version)
    args = [f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}"]
    shapes = plan.shapes()
    if shapes is not None:
        name = plan.input_name
        args += [f"--minShapes={name}:{_dims(shapes[0])}", f"--optShapes={name}:{_dims(shapes[1])}",
                 f"--maxShapes={name}:{_dims(shapes[2])}"]
    if plan.precision == "fp16":
        args += list(family.fp16_flags)
    elif plan.precision == "int8":
        args += list(family.int8_flags)
        if plan.calib_cache:
            if not family.implicit_int8:
                raise TensorRtVersionError(f"TensorRT {family.name} has no calibration-cache (--calib) int8 path; "
                                           "it builds int8 from the Q/DQ ONNX only")
            args.append(f"--calib={plan.calib_cache}")
    if not plan.tf32:
        args.append("--noTF32")
    if plan.dla_core is not None:
        if not family.has_dla:
            raise TensorRtVersionError(f"TensorRT {family.name} cannot build for DLA ({family.jetpack}); "
                                       "remove dla_core from the target's [backend_options]")
        args += [f"--useDLACore={int(plan.dla_core)}", "--allowGPUFallback"]
    if plan.timing_cache:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    args += [f"--memPoolSize=workspace:{int(plan.workspace_mib)}", family.build_only_flag]
    return args


def lint_command(argv: list[str], version: TrtVersion | str) -> list[str]:
    """Problems of a trtexec argv for ``version`` (empty = every flag is one that version accepts)."""
    family = family_for(version)
    version = parse_version(version) if isinstance(version, str) else version
    problems = []
    for arg in argv:
        if not arg.startswith("--"):
            problems.append(f"{arg!r} is not a --flag")
            continue
        flag = arg.split("=", 1)[0]
        if version.major >= 11 and flag in REMOVED_IN_11:
            problems.append(f"{flag} was removed in TensorRT 11")
        elif version.major >= 10 and flag in REMOVED_IN_10:
            problems.append(f"{flag} was removed in TensorRT 10")
        elif flag not in family.flags:
            problems.append(f"{flag} is not a flag edgekit knows TensorRT {family.name} accepts")
    flags = [a.split("=", 1)[0] for a in argv]
    if "--onnx" not in flags or "--saveEngine" not in flags:
        problems.append("needs --onnx and --saveEngine")
    shape_flags = {f for f in flags if f in ("--minShapes", "--optShapes", "--maxShapes")}
    if shape_flags and len(shape_flags) != 3:  # sampleOptions: only --optShapes, or all three
        problems.append("give all of --minShapes, --optShapes and --maxShapes")
    if "--allowGPUFallback" in flags and "--useDLACore" not in flags:
        problems.append("--allowGPUFallback without --useDLACore")
    return problems


# --- which files a build reads, per family ------------------------------------------------------

ONNX_FP32 = "model.onnx"
#: strongly typed fp16 graph (fp32 I/O) for the families that take fp16 from the ONNX (11.x)
ONNX_FP16 = "model_fp16.onnx"
#: Q/DQ graph with int8 weight initializers (TensorRT >= 10)
ONNX_INT8 = "model_int8_qdq.onnx"
#: Q/DQ graph with float weights -> Q -> DQ (TensorRT 8.x)
ONNX_INT8_FLOAT_WEIGHTS = "model_int8_qdq_trt8.onnx"
#: the calibration cache (implicit int8 on DLA); its header is rewritten to the device's version at build time
CALIBRATION_CACHE = "tensorrt_calibration.cache"


def plan_for(family: TrtFamily, precision: str, engine: str, input_name: str,
             input_shape: tuple[int, int, int, int], batch_range: tuple[int, int, int] = (1, 1, 1),
             dynamic: bool = False, dla_core: int | None = None, workspace_mib: int = 1024) -> BuildPlan:
    """The build of ``precision`` for ``family``: which ONNX it parses and with what.

    fp16: the fp32 ONNX + the family's fp16 flag, or the fp16 ONNX where the family has no flag (11.x).
    int8: the Q/DQ ONNX in the family's weight form; on DLA with a family that has implicit int8, the fp32
    ONNX + the calibration cache (DLA runs int8 from per-tensor scales). ``dla_core`` < 0, a family
    without DLA, or fp32 (DLA has no fp32): GPU only. ``batch_range`` (min, opt, max) is used when the
    ONNX batch axis is ``dynamic``.
    """
    # DLA computes in fp16 and int8 only: an fp32 build stays on the GPU
    dla = dla_core if dla_core is not None and dla_core >= 0 and family.has_dla and precision != "fp32" else None
    onnx_file, calib = ONNX_FP32, None
    if precision == "fp16" and family.fp16_onnx == "fp16":
        onnx_file = ONNX_FP16
    elif precision == "int8":
        if dla is not None and family.implicit_int8:
            calib = CALIBRATION_CACHE
        else:
            onnx_file = ONNX_INT8_FLOAT_WEIGHTS if family.int8_weights == "float_qdq" else ONNX_INT8
    _, opt_batch, max_batch = batch_range
    return BuildPlan(onnx=onnx_file, engine=engine, precision=precision, input_name=input_name,
                     input_shape=input_shape, dynamic=dynamic, opt_batch=max(1, opt_batch),
                     max_batch=max(1, max_batch, opt_batch), tf32=False, dla_core=dla, calib_cache=calib,
                     workspace_mib=workspace_mib)


def family_names() -> list[str]:
    return [family.name for family in VERSIONS.values()]


def family_by_name(name: str) -> TrtFamily:
    for family in VERSIONS.values():
        if family.name == name:
            return family
    raise TensorRtVersionError(f"no TensorRT family {name!r}; known: {', '.join(family_names())}")
