"""Tests of diffim.config: defaults, validation, overrides and round trips."""

import copy
import math
import pickle

import pytest
import yaml

from diffim.config import (
    BackgroundConfig,
    DetectionConfig,
    ImagePsfMatchConfig,
    KernelChoice,
    PsfMatchConfig,
    PsfMatchConfigAL,
    PsfMatchConfigDF,
    WarpingConfig,
    config_documentation,
)
from diffim.errors import DiffimConfigError

# --------------------------------------------------------------------------------------------
# Defaults (spec §2.2-§2.5)


@pytest.mark.parametrize(
    ("cls", "name", "default"),
    [
        (DetectionConfig, "detThreshold", 10.0),
        (DetectionConfig, "detThresholdType", "pixel_stdev"),
        (DetectionConfig, "detOnTemplate", True),
        (DetectionConfig, "badMaskPlanes", ("NO_DATA", "EDGE", "SAT")),
        (DetectionConfig, "fpNpixMin", 5),
        (DetectionConfig, "fpNpixMax", 500),
        (DetectionConfig, "fpGrowKernelScaling", 1.0),
        (DetectionConfig, "fpGrowPix", 30),
        (DetectionConfig, "scaleByFwhm", True),
        (WarpingConfig, "warpingKernelName", "lanczos3"),
        (WarpingConfig, "maskWarpingKernelName", "bilinear"),
        (WarpingConfig, "growFullMask", ("EDGE",)),
        (BackgroundConfig, "binSize", 128),
        (BackgroundConfig, "algorithm", "AKIMA_SPLINE"),
        (PsfMatchConfig, "useAfwBackground", False),
        (PsfMatchConfig, "fitForBackground", False),
        (PsfMatchConfig, "kernelBasisSet", "alard-lupton"),
        (PsfMatchConfig, "kernelSize", 21),
        (PsfMatchConfig, "scaleByFwhm", True),
        (PsfMatchConfig, "kernelSizeFwhmScaling", 6.0),
        (PsfMatchConfig, "kernelSizeMin", 21),
        (PsfMatchConfig, "kernelSizeMax", 35),
        (PsfMatchConfig, "spatialModelType", "chebyshev1"),
        (PsfMatchConfig, "spatialKernelOrder", 2),
        (PsfMatchConfig, "spatialBgOrder", 1),
        (PsfMatchConfig, "sizeCellX", 128),
        (PsfMatchConfig, "sizeCellY", 128),
        (PsfMatchConfig, "nStarPerCell", 3),
        (PsfMatchConfig, "maxSpatialIterations", 3),
        (PsfMatchConfig, "usePcaForSpatialKernel", False),
        (PsfMatchConfig, "subtractMeanForPca", True),
        (PsfMatchConfig, "numPrincipalComponents", 5),
        (PsfMatchConfig, "singleKernelClipping", True),
        (PsfMatchConfig, "kernelSumClipping", True),
        (PsfMatchConfig, "spatialKernelClipping", True),
        (PsfMatchConfig, "checkConditionNumber", False),
        (PsfMatchConfig, "badMaskPlanes", ("NO_DATA", "EDGE", "SAT")),
        (PsfMatchConfig, "candidateResidualMeanMax", 0.25),
        (PsfMatchConfig, "candidateResidualStdMax", 1.5),
        (PsfMatchConfig, "useCoreStats", False),
        (PsfMatchConfig, "candidateCoreRadius", 3),
        (PsfMatchConfig, "maxKsumSigma", 3.0),
        (PsfMatchConfig, "maxConditionNumber", 5.0e7),
        (PsfMatchConfig, "conditionNumberType", "EIGENVALUE"),
        (PsfMatchConfig, "maxSpatialConditionNumber", 1.0e10),
        (PsfMatchConfig, "iterateSingleKernel", False),
        (PsfMatchConfig, "constantVarianceWeighting", True),
        (PsfMatchConfig, "calculateKernelUncertainty", False),
        (PsfMatchConfig, "useBicForKernelBasis", False),
        (PsfMatchConfigAL, "kernelBasisSet", "alard-lupton"),
        (PsfMatchConfigAL, "maxConditionNumber", 5.0e7),
        (PsfMatchConfigAL, "alardNGauss", 3),
        (PsfMatchConfigAL, "alardDegGauss", (4, 2, 2)),
        (PsfMatchConfigAL, "alardSigGauss", (0.7, 1.5, 3.0)),
        (PsfMatchConfigAL, "alardGaussBeta", 2.0),
        (PsfMatchConfigAL, "alardMinSig", 0.7),
        (PsfMatchConfigAL, "alardDegGaussDeconv", 3),
        (PsfMatchConfigAL, "alardMinSigDeconv", 0.4),
        (PsfMatchConfigAL, "alardNGaussDeconv", 3),
        (PsfMatchConfigDF, "kernelBasisSet", "delta-function"),
        (PsfMatchConfigDF, "maxConditionNumber", 5.0e6),
        (PsfMatchConfigDF, "usePcaForSpatialKernel", True),
        (PsfMatchConfigDF, "subtractMeanForPca", True),
        (PsfMatchConfigDF, "useBicForKernelBasis", False),
        (PsfMatchConfigDF, "useRegularization", True),
        (PsfMatchConfigDF, "regularizationType", "centralDifference"),
        (PsfMatchConfigDF, "centralRegularizationStencil", 9),
        (PsfMatchConfigDF, "forwardRegularizationOrders", (1, 2)),
        (PsfMatchConfigDF, "regularizationBorderPenalty", 3.0),
        (PsfMatchConfigDF, "lambdaType", "absolute"),
        (PsfMatchConfigDF, "lambdaValue", 0.2),
        (PsfMatchConfigDF, "lambdaScaling", 1e-4),
        (PsfMatchConfigDF, "lambdaStepType", "log"),
        (PsfMatchConfigDF, "lambdaMin", -1.0),
        (PsfMatchConfigDF, "lambdaMax", 2.0),
        (PsfMatchConfigDF, "lambdaStep", 0.1),
        (ImagePsfMatchConfig, "mode", "auto"),
        (ImagePsfMatchConfig, "selectDetectionThreshold", 10.0),
        (ImagePsfMatchConfig, "selectMinSnr", 10.0),
        (ImagePsfMatchConfig, "selectSaturationFraction", 0.8),
    ],
)
def test_defaults(cls, name, default):
    value = getattr(cls(), name)
    assert value == default
    assert type(value) is type(default)


def test_nested_defaults_are_independent():
    first, second = PsfMatchConfigAL(), PsfMatchConfigAL()
    assert first.detectionConfig is not second.detectionConfig
    assert isinstance(first.afwBackgroundConfig, BackgroundConfig)
    assert isinstance(first.warpingConfig, WarpingConfig)


def test_kernel_choice():
    config = ImagePsfMatchConfig()
    assert config.kernel.name == "AL"
    assert config.kernel.active is config.kernel.AL
    config.kernel.name = "DF"
    assert config.kernel.active is config.kernel.DF
    assert config.kernel["AL"] is config.kernel.AL
    with pytest.raises(DiffimConfigError, match="name='XX' is not one of"):
        config.kernel.name = "XX"
    with pytest.raises(DiffimConfigError, match="'XX' is not 'AL' or 'DF'"):
        config.kernel["XX"]


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (PsfMatchConfigAL, {"kernelSize": 20}, r"kernelSize=20 must be odd"),
        (PsfMatchConfigAL, {"kernelSize": -1}, r"kernelSize=-1 is below its minimum 1"),
        (PsfMatchConfigAL, {"kernelSizeMin": 22}, r"kernelSizeMin=22 must be odd"),
        (PsfMatchConfigAL, {"kernelSizeMin": 37}, r"kernelSizeMin=37 is larger than"),
        (PsfMatchConfigAL, {"kernelSizeFwhmScaling": 0.5}, r"kernelSizeFwhmScaling=0.5"),
        (PsfMatchConfigAL, {"maxKsumSigma": math.nan}, r"maxKsumSigma=nan is not a number"),
        (PsfMatchConfigDF, {"lambdaValue": math.nan}, r"lambdaValue=nan is not a number"),
        (PsfMatchConfigAL, {"sizeCellX": 16}, r"sizeCellX=16 is below its minimum 32"),
        (PsfMatchConfigAL, {"sizeCellY": 31}, r"sizeCellY=31"),
        (PsfMatchConfigAL, {"spatialKernelOrder": -1}, r"spatialKernelOrder=-1"),
        (PsfMatchConfigAL, {"spatialBgOrder": -1}, r"spatialBgOrder=-1"),
        (PsfMatchConfigAL, {"maxSpatialIterations": 0}, r"maxSpatialIterations=0 is below"),
        (PsfMatchConfigAL, {"maxSpatialIterations": 6}, r"maxSpatialIterations=6 is above"),
        (PsfMatchConfigAL, {"numPrincipalComponents": 2}, r"numPrincipalComponents=2"),
        (PsfMatchConfigAL, {"candidateCoreRadius": 0}, r"candidateCoreRadius=0"),
        (PsfMatchConfigAL, {"candidateResidualStdMax": -1.0}, r"candidateResidualStdMax"),
        (PsfMatchConfigAL, {"maxConditionNumber": -1.0}, r"maxConditionNumber"),
        (PsfMatchConfigAL, {"nStarPerCell": 0}, r"nStarPerCell=0 is below its minimum 1"),
        (PsfMatchConfigAL, {"nStarPerCell": -2}, r"nStarPerCell=-2"),
        (PsfMatchConfigAL, {"spatialModelType": "spline"}, r"spatialModelType='spline'"),
        (PsfMatchConfigAL, {"conditionNumberType": "svd"}, r"conditionNumberType='svd'"),
        (PsfMatchConfigAL, {"kernelBasisSet": "delta-function"}, r"kernelBasisSet="),
        (PsfMatchConfigAL, {"kernelSize": "21"}, r"kernelSize='21' must be an integer"),
        (PsfMatchConfigAL, {"kernelSize": True}, r"kernelSize=True must be an integer"),
        (PsfMatchConfigAL, {"kernelSize": 21.5}, r"kernelSize=21.5 must be an integer"),
        (PsfMatchConfigAL, {"fitForBackground": 1}, r"fitForBackground=1 must be a boolean"),
        (PsfMatchConfigAL, {"badMaskPlanes": "SAT"}, r"badMaskPlanes='SAT' must be a list"),
        (PsfMatchConfigAL, {"badMaskPlanes": ("SAT", 3)}, r"badMaskPlanes\[1\]=3"),
        (PsfMatchConfigAL, {"alardDegGauss": (4, 2)}, r"alardDegGauss has 2 entries"),
        (PsfMatchConfigAL, {"alardSigGauss": (1.0,)}, r"alardSigGauss has 1 entries"),
        (PsfMatchConfigAL, {"alardSigGauss": (0.7, 0.0, 3.0)}, r"alardSigGauss\[1\]=0.0"),
        (PsfMatchConfigAL, {"alardDegGauss": (4, -1, 2)}, r"alardDegGauss\[1\]=-1"),
        (PsfMatchConfigAL, {"alardNGauss": 0}, r"alardNGauss=0"),
        (PsfMatchConfigAL, {"alardMinSig": 0.1}, r"alardMinSig=0.1 is below its minimum 0.25"),
        (PsfMatchConfigAL, {"alardMinSigDeconv": 0.2}, r"alardMinSigDeconv=0.2"),
        (PsfMatchConfigAL, {"alardGaussBeta": 0.0}, r"alardGaussBeta=0.0 must be greater"),
        (PsfMatchConfigDF, {"centralRegularizationStencil": 1}, r"centralRegularizationStencil"),
        (PsfMatchConfigDF, {"forwardRegularizationOrders": (0,)}, r"forwardRegularizationOrd"),
        (PsfMatchConfigDF, {"forwardRegularizationOrders": (1, 4)}, r"Orders\[1\]=4 is above"),
        (PsfMatchConfigDF, {"regularizationBorderPenalty": -1.0}, r"regularizationBorderPenalty"),
        (PsfMatchConfigDF, {"regularizationType": "foo"}, r"regularizationType='foo'"),
        (PsfMatchConfigDF, {"lambdaType": "foo"}, r"lambdaType='foo'"),
        (PsfMatchConfigDF, {"lambdaStepType": "cubic"}, r"lambdaStepType"),
        (PsfMatchConfigDF, {"lambdaMin": 3.0}, r"lambdaMin=3.0 is above"),
        (PsfMatchConfigDF, {"lambdaStep": 0.0}, r"lambdaStep=0.0"),
        (PsfMatchConfigDF, {"kernelBasisSet": "alard-lupton"}, r"select the other family"),
        (DetectionConfig, {"detThreshold": 2.0}, r"detThreshold=2.0"),
        (DetectionConfig, {"fpNpixMin": 4}, r"fpNpixMin=4"),
        (DetectionConfig, {"fpNpixMax": 501}, r"fpNpixMax=501"),
        (DetectionConfig, {"fpGrowPix": 9}, r"fpGrowPix=9"),
        (DetectionConfig, {"detThresholdType": "sigma"}, r"detThresholdType"),
        (WarpingConfig, {"warpingKernelName": "cubic"}, r"warpingKernelName='cubic'"),
        (ImagePsfMatchConfig, {"mode": "both"}, r"mode='both'"),
        (ImagePsfMatchConfig, {"selectMinSnr": 2000.0}, r"selectMinSnr=2000.0 must be below"),
        (ImagePsfMatchConfig, {"selectSaturationFraction": 1.5}, r"selectSaturationFraction"),
        (ImagePsfMatchConfig, {"selectDetectionThreshold": 0.0}, r"selectDetectionThreshold"),
    ],
)
def test_invalid_values_name_the_field(cls, kwargs, match):
    with pytest.raises(DiffimConfigError, match=match):
        cls(**kwargs)


def test_errors_are_value_errors():
    with pytest.raises(ValueError, match="kernelSize"):
        PsfMatchConfigAL(kernelSize=20)


def test_message_has_rule_and_doc():
    with pytest.raises(DiffimConfigError) as info:
        PsfMatchConfigAL(sizeCellX=16)
    assert str(info.value) == "sizeCellX=16 is below its minimum 32 (SpatialCell width (pixels).)"


@pytest.mark.parametrize("value", [-1, 1, 5, 100])
def test_n_star_per_cell_accepts_minus_one_for_all(value):
    assert PsfMatchConfigAL(nStarPerCell=value).nStarPerCell == value


@pytest.mark.parametrize("stencil", [5, 9])
def test_valid_stencils(stencil):
    assert PsfMatchConfigDF(centralRegularizationStencil=stencil).centralRegularizationStencil == (
        stencil
    )


@pytest.mark.parametrize("orders", [(1,), (1, 2), (3,), (1, 2, 3)])
def test_valid_forward_orders(orders):
    assert PsfMatchConfigDF(forwardRegularizationOrders=orders).forwardRegularizationOrders == (
        orders
    )


def test_zero_border_penalty_is_valid():
    assert PsfMatchConfigDF(regularizationBorderPenalty=0.0).regularizationBorderPenalty == 0.0


def test_assignment_then_validate():
    config = PsfMatchConfigAL()
    config.kernelSize = 20  # bounds are checked by validate(), as in pex_config
    with pytest.raises(DiffimConfigError, match="kernelSize=20 must be odd"):
        config.validate()
    config.kernelSize = 25
    config.validate()


def test_assignment_checks_type_at_once():
    config = PsfMatchConfigAL()
    with pytest.raises(DiffimConfigError, match="kernelSize='big' must be an integer"):
        config.kernelSize = "big"
    config.alardDegGauss = [3, 2, 1]
    assert config.alardDegGauss == (3, 2, 1)
    config.maxKsumSigma = 2
    assert isinstance(config.maxKsumSigma, float)


def test_unknown_attribute_suggests_nearest():
    config = PsfMatchConfigAL()
    with pytest.raises(DiffimConfigError, match="did you mean 'kernelSize'"):
        config.kernelSzie = 25


def test_sequential_assignment_of_linked_fields():
    config = PsfMatchConfigAL()
    config.alardNGauss = 2
    config.alardDegGauss = (4, 2)
    config.alardSigGauss = (1.0, 2.0)
    config.validate()


def test_nested_errors_give_the_dotted_path():
    config = ImagePsfMatchConfig()
    config.kernel.AL.kernelSize = 20
    with pytest.raises(DiffimConfigError, match=r"^kernel\.AL\.kernelSize=20 must be odd"):
        config.validate()
    config.kernel.AL.kernelSize = 21
    config.kernel.DF.detectionConfig.fpGrowPix = 5
    with pytest.raises(DiffimConfigError, match=r"kernel\.DF\.detectionConfig\.fpGrowPix=5"):
        config.validate()


# --------------------------------------------------------------------------------------------
# Overrides


def test_overrides_from_the_brief():
    config = ImagePsfMatchConfig()
    config.apply_overrides(
        [
            "kernelSize=25",
            "kernel.active.alardDegGauss=[4,2,2]",
            "fitForBackground=false",
            "kernel.name=DF",
            "kernelSize=19",
        ]
    )
    assert config.kernel.AL.kernelSize == 25
    assert config.kernel.AL.fitForBackground is False
    assert config.kernel.name == "DF"
    assert config.kernel.DF.kernelSize == 19  # bare names follow the active kernel
    assert config.kernel.DF.fitForBackground is True


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("mode=convolveScience", "mode", "convolveScience"),
        ("selectMaxSnr=.inf", "selectMaxSnr", math.inf),
        ("selectMinSnr=5", "selectMinSnr", 5.0),
        ("kernelSize=23.0", "kernel.AL.kernelSize", 23),
        ("alardSigGauss=[1, 2, 3]", "kernel.AL.alardSigGauss", (1.0, 2.0, 3.0)),
        ("badMaskPlanes=[SAT, BAD]", "kernel.AL.badMaskPlanes", ("SAT", "BAD")),
        ("detectionConfig.detThreshold=5", "kernel.AL.detectionConfig.detThreshold", 5.0),
        ("kernel.DF.lambdaScaling=1e-3", "kernel.DF.lambdaScaling", 1e-3),
        ("kernel.DF.lambdaType = relative", "kernel.DF.lambdaType", "relative"),
        (
            "warpingConfig.warpingKernelName=lanczos4",
            "kernel.AL.warpingConfig.warpingKernelName",
            "lanczos4",
        ),
    ],
)
def test_override_values_are_parsed_and_coerced(override, path, expected):
    config = ImagePsfMatchConfig()
    config.apply_overrides(override)
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_override_linked_fields_validate_at_the_end():
    config = ImagePsfMatchConfig()
    config.apply_overrides(["alardNGauss=2", "alardDegGauss=[3,1]", "alardSigGauss=[1.0,2.0]"])
    assert config.kernel.AL.alardDegGauss == (3, 1)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("kernelSzie=25", r"unknown config field 'kernelSzie'.*did you mean 'kernelSize'"),
        ("kernel.AL.fitForBackgrnd=true", r"did you mean 'fitForBackground'"),
        ("detectionConfig.detThreshhold=5", r"did you mean 'detThreshold'"),
        ("kernelSize", r"not of the form field=value"),
        ("kernelSize=abc", r"kernelSize='abc' must be an integer"),
        ("kernelSize=20", r"kernel\.AL\.kernelSize=20 must be odd"),
        ("kernel.name=XX", r"override 'kernel.name=XX'.*not one of"),
        ("fitForBackground=maybe", r"fitForBackground='maybe' must be a boolean"),
    ],
)
def test_bad_overrides(override, match):
    config = ImagePsfMatchConfig()
    with pytest.raises(DiffimConfigError, match=match):
        config.apply_overrides([override])


def test_failed_overrides_leave_config_unchanged():
    config = ImagePsfMatchConfig()
    before = copy.deepcopy(config)
    with pytest.raises(DiffimConfigError, match="kernelSizeMax"):
        config.apply_overrides(["kernelSize=25", "kernelSizeMin=37"])
    assert config == before


def test_overrides_work_on_sub_configs():
    config = PsfMatchConfigDF()
    config.apply_overrides(
        ["regularizationType=forwardDifference", "forwardRegularizationOrders=[3]"]
    )
    assert config.forwardRegularizationOrders == (3,)


# --------------------------------------------------------------------------------------------
# Round trips


def _custom_config():
    config = ImagePsfMatchConfig(mode="convolveScience", selectMaxSnr=math.inf)
    config.kernel.name = "DF"
    config.kernel.AL.alardDegGauss = (3, 2, 1)
    config.kernel.AL.kernelSize = 27
    config.kernel.DF.lambdaScaling = 3.5e-5
    config.kernel.DF.maxConditionNumber = 1.0e20
    config.kernel.DF.badMaskPlanes = ()
    config.kernel.DF.detectionConfig.detThreshold = 5.5
    config.kernel.DF.afwBackgroundConfig.ignoredPixelMask = ("BAD", 'WEIRD"NAME')
    return config


@pytest.mark.parametrize("config", [ImagePsfMatchConfig(), _custom_config()])
def test_dict_round_trip(config):
    data = config.to_dict()
    assert isinstance(data["kernel"]["AL"]["alardDegGauss"], list)
    assert ImagePsfMatchConfig.from_dict(data) == config


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml"])
@pytest.mark.parametrize("config", [ImagePsfMatchConfig(), _custom_config()])
def test_file_round_trip(tmp_path, suffix, config):
    path = tmp_path / f"config{suffix}"
    config.save(path)
    assert ImagePsfMatchConfig.load(path) == config
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_sub_config_file_round_trip(tmp_path):
    config = PsfMatchConfigDF(kernelSize=15, lambdaValue=0.5)
    for suffix in (".yaml", ".toml"):
        config.save(tmp_path / f"df{suffix}")
        assert PsfMatchConfigDF.load(tmp_path / f"df{suffix}") == config


def test_pickle_and_deepcopy():
    config = _custom_config()
    assert pickle.loads(pickle.dumps(config)) == config
    clone = copy.deepcopy(config)
    assert clone == config
    clone.kernel.DF.kernelSize = 15
    assert clone != config
    assert config.kernel.DF.kernelSize == 21


def test_from_dict_is_partial_and_strict():
    config = ImagePsfMatchConfig.from_dict({"kernel": {"name": "DF", "DF": {"kernelSize": 15}}})
    assert config.kernel.active.kernelSize == 15
    assert PsfMatchConfigAL(fitForBackground=True) == config.kernel.AL
    with pytest.raises(DiffimConfigError, match=r"'kernel.DF.kernelSise'.*'kernelSize'"):
        ImagePsfMatchConfig.from_dict({"kernel": {"DF": {"kernelSise": 15}}})
    with pytest.raises(DiffimConfigError, match=r"^kernel\.AL\.kernelSize=20 must be odd"):
        ImagePsfMatchConfig.from_dict({"kernel": {"AL": {"kernelSize": 20}}})
    with pytest.raises(DiffimConfigError, match="kernelSize is a kernel field: write it under"):
        ImagePsfMatchConfig.from_dict({"kernelSize": 25})
    with pytest.raises(DiffimConfigError, match="must be a mapping"):
        ImagePsfMatchConfig.from_dict([1, 2])


def test_load_errors_name_the_file(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("kernel:\n  AL:\n    kernelSzie: 25\n")
    with pytest.raises(DiffimConfigError, match=r"bad\.yaml.*did you mean 'kernelSize'"):
        ImagePsfMatchConfig.load(bad_key)
    bad_syntax = tmp_path / "bad.toml"
    bad_syntax.write_text("mode = = 3\n")
    with pytest.raises(DiffimConfigError, match="cannot parse"):
        ImagePsfMatchConfig.load(bad_syntax)
    with pytest.raises(DiffimConfigError, match=r"\.yaml, \.yml or \.toml"):
        ImagePsfMatchConfig().save(tmp_path / "config.json")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert ImagePsfMatchConfig.load(empty) == ImagePsfMatchConfig()


def test_documentation_is_commented_yaml_that_loads_back():
    text = config_documentation()
    assert "    kernelSize: 21  # Kernel width and height (pixels)" in text
    assert "  name: AL  # Active kernel family" in text
    assert ImagePsfMatchConfig.from_dict(yaml.safe_load(text)) == ImagePsfMatchConfig()
    custom = _custom_config()
    assert ImagePsfMatchConfig.from_dict(yaml.safe_load(custom.describe())) == custom


def test_kernel_choice_round_trip():
    choice = KernelChoice(name="DF")
    assert KernelChoice.from_dict(choice.to_dict()) == choice
    assert choice.active.kernelBasisSet == "delta-function"


def test_image_psf_match_kernels_fit_a_background_by_default():
    """The bare kernel configs keep ip_diffim's legacy default; the task's config fits one."""
    assert PsfMatchConfigAL().fitForBackground is False
    config = ImagePsfMatchConfig()
    assert config.kernel.AL.fitForBackground is True
    assert config.kernel.DF.fitForBackground is True


def test_partial_file_keeps_the_task_defaults(tmp_path):
    """A file that sets one kernel field keeps ImagePsfMatchConfig's other kernel defaults."""
    path = tmp_path / "partial.yaml"
    path.write_text("kernel:\n  AL:\n    spatialKernelOrder: 1\n")
    config = ImagePsfMatchConfig.load(path)
    assert config.kernel.AL.spatialKernelOrder == 1
    assert config.kernel.AL.fitForBackground is True
    assert config.kernel.DF.fitForBackground is True
