"""The PyTorch EfficientDet: size, cost, parity with effdet, fusion, export."""
import pytest
import torch

from edgedet.config import VARIANTS, get_config
from edgedet.model import create_model
from edgedet.model.bifpn import FuseInputs, bifpn_nodes
from edgedet.model.complexity import count_macs, count_parameters

# Published parameter counts (millions) and multiply-adds (billions) at native resolution.
PUBLISHED_PARAMS = {
    "d0": 3.9, "d1": 6.6, "d2": 8.1, "d3": 12.0, "d4": 20.7, "d5": 33.7, "d6": 51.9, "d7": 51.9,
    "d7x": 77.0, "lite0": 3.2, "lite1": 4.2, "lite2": 5.3, "lite3": 8.4, "lite3x": 9.3, "lite4": 15.1,
}
PUBLISHED_MACS = {"d0": 2.54, "d1": 6.10, "d2": 11.0, "d3": 24.9}


@pytest.mark.parametrize("name", VARIANTS)
def test_parameters_within_2_percent_of_published(name):
    model = create_model(name)
    params = count_parameters(model) / 1e6
    assert abs(params - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.02, params


@pytest.mark.parametrize("name", list(PUBLISHED_MACS))
def test_macs_within_5_percent_of_published(name):
    model = create_model(name)
    macs = count_macs(model, model.image_size) / 1e9
    assert abs(macs - PUBLISHED_MACS[name]) / PUBLISHED_MACS[name] < 0.05, macs


@pytest.mark.parametrize("name", ["d0", "lite0"])
def test_output_shapes_and_order(name):
    model = create_model(name, num_classes=7)
    config = get_config(name)
    with torch.no_grad():
        cls, box = model(torch.zeros(2, 3, config.image_size, config.image_size))
    assert cls.shape == (2, config.num_anchors(), 7)
    assert box.shape == (2, config.num_anchors(), 4)


def _randomize_statistics(state_dict, seed=1):
    """Random BN statistics and fusion weights, so parity is tested on non-trivial activations."""
    g = torch.Generator().manual_seed(seed)
    for key, value in state_dict.items():
        if key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=g) + 0.5)
        elif key.endswith(("running_mean", "bn.bias", "bn1.bias", "bn2.bias", "bn3.bias")):
            value.copy_(torch.randn(value.shape, generator=g) * 0.2)
        elif key.endswith("edge_weights"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.5 + 1.0)
    return state_dict


def _flatten(outputs, width):
    return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, width) for o in outputs], dim=1)


@pytest.mark.parametrize("name", ["d0", "d3", "lite0"])
def test_equal_outputs_to_effdet(name):
    from effdet_ref import import_effdet

    effdet = import_effdet()
    reference = effdet.create_model(f"tf_efficientdet_{name}", pretrained=False, pretrained_backbone=False)
    state = _randomize_statistics(reference.state_dict())
    reference.load_state_dict(state)
    reference.eval()
    model = create_model(name)
    model.load_state_dict(state, strict=True)
    size = model.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cls, box = model(x)
        ref_cls, ref_box = reference(x)
    ref_cls, ref_box = _flatten(ref_cls, 90), _flatten(ref_box, 4)
    assert ref_cls.abs().max() > 1.0  # the comparison is on non-trivial values
    torch.testing.assert_close(cls, ref_cls, atol=1e-4, rtol=0)
    torch.testing.assert_close(box, ref_box, atol=1e-4, rtol=0)


def test_bifpn_graph_has_top_down_bottom_up_and_shortcuts():
    nodes = bifpn_nodes(3, 7)
    assert [level for level, _ in nodes] == [6, 5, 4, 3, 4, 5, 6, 7]
    assert nodes[0][1] == [3, 4]  # P6_td <- P6_in, P7_in
    assert nodes[4][1] == [1, 7, 8]  # P4_out <- P4_in (shortcut), P4_td, P3_out
    assert nodes[7][1] == [4, 11]  # P7_out <- P7_in, P6_out


def test_fusion_formulas():
    a, b = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 10.0)
    fast = FuseInputs([0, 1], [1, 1], [2, 2], 1, 2, "fast_normalized")
    with torch.no_grad():
        fast.edge_weights.copy_(torch.tensor([3.0, -1.0]))  # relu -> (3, 0)
    expected = (3 * 2.0 + 0 * 10.0) / (3 + 0 + 1e-4)
    assert fast([a, b]).flatten()[0].item() == pytest.approx(expected, rel=1e-6)

    soft = FuseInputs([0, 1], [1, 1], [2, 2], 1, 2, "softmax")
    with torch.no_grad():
        soft.edge_weights.copy_(torch.tensor([0.0, 1.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert soft([a, b]).flatten()[0].item() == pytest.approx((w[0] * 2 + w[1] * 10).item(), rel=1e-6)

    plain = FuseInputs([0, 1], [1, 1], [2, 2], 1, 2, "sum")
    assert plain.edge_weights is None
    assert plain([a, b]).flatten()[0].item() == 12.0
    with pytest.raises(ValueError, match="unknown fusion"):
        FuseInputs([0, 1], [1, 1], [2, 2], 1, 2, "max")


@pytest.mark.parametrize("fusion", ["fast_normalized", "softmax", "sum"])
def test_fusion_selectable_and_folding_keeps_outputs(fusion):
    model = create_model("lite0", fusion=fusion)
    assert model.config.fusion == fusion
    has_weights = any(k.endswith("edge_weights") for k in model.state_dict())
    assert has_weights == (fusion != "sum")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("edge_weights"):
                p.uniform_(-0.5, 2.0)
        x = torch.randn(1, 3, 320, 320)
        before = model(x)
        model.fold_fusion_weights()
        after = model(x)
    assert "edge_weights" not in str([n for n, _ in model.named_buffers()])  # folded weights are not state
    torch.testing.assert_close(after[0], before[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=1e-5, rtol=0)


def test_other_input_size_and_errors():
    model = create_model("lite0", image_size=384)
    with torch.no_grad():
        cls, _ = model(torch.zeros(1, 3, 384, 384))
    assert cls.shape[1] == get_config("lite0").num_anchors(384)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("d0", image_size=500)
    with pytest.raises(ValueError, match="valid names"):
        create_model("d8")


def test_reset_class_head():
    model = create_model("lite0")
    model.reset_class_head(3)
    with torch.no_grad():
        cls, _ = model(torch.zeros(1, 3, 320, 320))
    assert cls.shape[-1] == 3 and model.config.num_classes == 3


@pytest.mark.parametrize("name", ["lite0", "d0"])
def test_torch_export_at_fixed_size(name):
    model = create_model(name).fold_fusion_weights()
    size = model.image_size
    x = torch.randn(1, 3, size, size)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
    got = program.module()(x)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_onnx_export_at_fixed_size(tmp_path):
    import numpy as np
    import onnxruntime as ort

    model = create_model("lite0").fold_fusion_weights()
    state = _randomize_statistics(model.state_dict())
    model.load_state_dict(state)
    x = torch.randn(1, 3, 320, 320)
    path = tmp_path / "lite0.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"],
                      output_names=["cls_logits", "box_regression"], external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cls, box = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_cls, ref_box = model(x)
    assert np.abs(cls - ref_cls.numpy()).max() < 1e-3
    assert np.abs(box - ref_box.numpy()).max() < 1e-3


def test_backbone_init_counts_groups_in_fan_out():
    """Depthwise kernels get He init on their per-group fan-out (not ~30x too small)."""
    model = create_model("d0")
    conv = model.backbone.blocks[5][0].conv_dw  # 5x5 depthwise, 672 channels
    fan_out = 5 * 5 * conv.out_channels // conv.groups
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
