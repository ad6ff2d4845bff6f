"""The compound-scaling table: the paper's rules and the reference figures."""
import math
import subprocess
import sys

import pytest

from edgedet.config import CONFIGS, VARIANTS, get_config

# (backbone, input, BiFPN channels, BiFPN layers, head layers, fusion) from the reference table.
REFERENCE = {
    "d0": ("efficientnet_b0", 512, 64, 3, 3, "fast_normalized"),
    "d1": ("efficientnet_b1", 640, 88, 4, 3, "fast_normalized"),
    "d2": ("efficientnet_b2", 768, 112, 5, 3, "fast_normalized"),
    "d3": ("efficientnet_b3", 896, 160, 6, 4, "fast_normalized"),
    "d4": ("efficientnet_b4", 1024, 224, 7, 4, "fast_normalized"),
    "d5": ("efficientnet_b5", 1280, 288, 7, 4, "fast_normalized"),
    "d6": ("efficientnet_b6", 1280, 384, 8, 5, "sum"),
    "d7": ("efficientnet_b6", 1536, 384, 8, 5, "sum"),
    "d7x": ("efficientnet_b7", 1536, 384, 8, 5, "sum"),
    "lite0": ("efficientnet_lite0", 320, 64, 3, 3, "sum"),
    "lite1": ("efficientnet_lite1", 384, 88, 4, 3, "sum"),
    "lite2": ("efficientnet_lite2", 448, 112, 5, 3, "sum"),
    "lite3": ("efficientnet_lite3", 512, 160, 6, 4, "sum"),
    "lite3x": ("efficientnet_lite3", 640, 200, 6, 4, "sum"),
    "lite4": ("efficientnet_lite4", 640, 224, 7, 4, "sum"),
}


def test_all_fifteen_variants_present():
    assert set(VARIANTS) == set(REFERENCE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_table_matches_reference(name):
    c = get_config(name)
    assert (c.backbone.name, c.image_size, c.fpn_channels, c.fpn_repeats, c.head_repeats, c.fusion) == REFERENCE[name]


@pytest.mark.parametrize("phi", range(5))
def test_compound_scaling_rules_d0_to_d4(phi):
    # The rules hold exactly up to D4; from D5 on the published table departs from them
    # (D5: 7 layers at 1280 px), which test_table_matches_reference pins.
    c = get_config(f"d{phi}")
    assert c.image_size == 512 + 128 * phi
    assert c.fpn_repeats == 3 + phi
    assert c.head_repeats == 3 + phi // 3
    # W = 64 * 1.35^phi, rounded by the reference to a multiple of 8 within ~6%
    assert c.fpn_channels % 8 == 0
    assert abs(c.fpn_channels - 64 * 1.35**phi) / (64 * 1.35**phi) < 0.07


def test_activation_normalization_and_anchors_by_family():
    d0, lite0, d7, d7x = (get_config(n) for n in ("d0", "lite0", "d7", "d7x"))
    assert d0.activation == "swish" and d0.backbone.squeeze_excite
    assert lite0.activation == "relu6" and not lite0.backbone.squeeze_excite
    assert lite0.normalization.mean == (127.0,) * 3 and lite0.normalization.std == (128.0,) * 3
    assert d0.normalization.mean[0] == pytest.approx(0.485 * 255)
    assert lite0.anchors.anchor_scale == 3.0 and d0.anchors.anchor_scale == 4.0 and d7.anchors.anchor_scale == 5.0
    assert d7x.max_level == 8 and d7x.num_levels == 6
    assert d0.anchors.anchors_per_cell == 9
    assert d0.anchors.octave_scales == pytest.approx((1.0, 2 ** (1 / 3), 2 ** (2 / 3)))


def test_feature_sizes_and_anchor_count():
    assert get_config("d0").feature_sizes() == [64, 32, 16, 8, 4]
    assert get_config("lite0").feature_sizes() == [40, 20, 10, 5, 3]  # ceil halving, like TF 'same'
    assert get_config("d0").num_anchors() == 9 * sum(s * s for s in (64, 32, 16, 8, 4))


def test_configs_are_frozen_and_copyable():
    c = get_config("d0")
    with pytest.raises(Exception):
        c.image_size = 1  # type: ignore[misc]
    c2 = c.with_(num_classes=3)
    assert c2.num_classes == 3 and c.num_classes == 90


def test_effdet_spellings_accepted():
    assert get_config("tf_efficientdet_d0") is CONFIGS["d0"]
    assert get_config("EfficientDet_Lite0") is CONFIGS["lite0"]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        get_config("d9")
    assert "d9" in str(e.value) and "lite4" in str(e.value) and "d7x" in str(e.value)


def test_config_is_pure_python():
    code = "import sys, edgedet.config; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
