"""Shape tables for Box2Mask and PropMask over configurations (CPU, small inputs)."""

from __future__ import annotations

import pytest
import torch

from ml.config import (
    FAST_BOX2MASK,
    FAST_PROPMASK,
    PAPER_BOX2MASK,
    PAPER_PROPMASK,
    Box2MaskConfig,
    PropMaskConfig,
    slices_per_side,
)
from ml.networks import Box2Mask, PropMask
from ml.networks.blocks import count_parameters

torch.set_num_threads(1)

TINY_BOX = Box2MaskConfig(base_width=4, max_width=16, n_stages=4, input_size=32, deep_supervision_heads=2)
TINY_PROP = PropMaskConfig(
    base_width=4, max_width=16, n_stages=4, input_size=32, attention_stages=2, deep_supervision_heads=3
)


@pytest.mark.parametrize("config", [TINY_BOX, FAST_BOX2MASK], ids=["tiny", "fast"])
@pytest.mark.parametrize("batch", [1, 3])
def test_box2mask_outputs_one_logit_map_per_supervised_level(config: Box2MaskConfig, batch: int) -> None:
    network = Box2Mask(config).eval()
    size = config.input_size
    with torch.no_grad():
        outputs = network(torch.randn(batch, 5, size, size))
        finest_only = network(torch.randn(batch, 5, size, size), all_heads=False)
    assert [tuple(out.shape) for out in outputs] == [
        (batch, 1, size // 2**level, size // 2**level) for level in range(config.deep_supervision_heads)
    ]
    assert [tuple(out.shape) for out in finest_only] == [(batch, 1, size, size)]


@pytest.mark.parametrize("config", [TINY_PROP, FAST_PROPMASK], ids=["tiny", "fast"])
@pytest.mark.parametrize(("batch", "adjacent"), [(1, 1), (2, 4), (1, 7)])
def test_propmask_predicts_every_adjacent_slice_at_every_level(
    config: PropMaskConfig, batch: int, adjacent: int
) -> None:
    network = PropMask(config).eval()
    size = config.input_size
    with torch.no_grad():
        output = network(
            torch.randn(batch, 1, size, size),
            (torch.rand(batch, 1, size, size) > 0.5).float(),
            torch.randn(batch, adjacent, size, size),
        )
    assert [tuple(mask.shape) for mask in output.masks] == [
        (batch, adjacent, size // 2**level, size // 2**level)
        for level in range(config.deep_supervision_heads)
    ]
    assert output.present is not None and tuple(output.present.shape) == (batch, adjacent)


def test_adjacent_slices_do_not_influence_each_other() -> None:
    network = PropMask(TINY_PROP).eval()
    size = TINY_PROP.input_size
    guide, mask = torch.randn(1, 1, size, size), (torch.rand(1, 1, size, size) > 0.5).float()
    adjacent = torch.randn(1, 3, size, size)
    with torch.no_grad():
        together = network(guide, mask, adjacent).masks[0]
        alone = network(guide, mask, adjacent[:, 1:2]).masks[0]
    torch.testing.assert_close(together[:, 1:2], alone, rtol=1e-4, atol=1e-4)


def test_paper_configuration_has_the_paper_parameter_counts() -> None:
    # PropSAM: Box2Mask 20.62 M, PropMask 32.48 M (+ our object-present head on the 512-channel bottleneck).
    assert count_parameters(Box2Mask(PAPER_BOX2MASK)) == pytest.approx(20.62e6, rel=0.002)
    propmask = PropMask(PAPER_PROPMASK)
    present = count_parameters(propmask.present)
    assert count_parameters(propmask) - present == pytest.approx(32.48e6, rel=0.002)


def test_fast_configuration_is_much_smaller_than_paper() -> None:
    assert count_parameters(PropMask(FAST_PROPMASK)) < count_parameters(PropMask(PAPER_PROPMASK)) / 3
    assert FAST_PROPMASK.input_size == 96


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 100}, "divisible"),
        ({"base_width": 32, "max_width": 16}, "base_width"),
        ({"attention_stages": 7}, "attention_stages"),
        ({"adjacent_slices": 0}, "adjacent_slices"),
    ],
)
def test_inconsistent_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PropMaskConfig(**kwargs)


def test_wrong_input_shapes_name_the_problem() -> None:
    network = PropMask(TINY_PROP)
    with pytest.raises(ValueError, match="adjacent"):
        network(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="Box2Mask expects"):
        Box2Mask(TINY_BOX)(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(("spacing", "expected"), [(0.5, 40), (1.0, 20), (3.0, 6), (5.0, 4), (25.0, 1)])
def test_propagation_reach_is_twenty_millimetres(spacing: float, expected: int) -> None:
    assert slices_per_side(spacing) == expected


def test_configs_saved_before_present_features_existed_rebuild_the_bottleneck_head() -> None:
    legacy = TINY_PROP.to_dict()
    del legacy["present_features"]
    rebuilt = PropMaskConfig.from_dict(legacy)
    assert rebuilt.present_features == "bottleneck"
    network = PropMask(rebuilt).eval()
    with torch.no_grad():
        output = network(torch.randn(1, 1, 32, 32), torch.ones(1, 1, 32, 32), torch.randn(1, 2, 32, 32))
    assert output.present is not None and tuple(output.present.shape) == (1, 2)


def test_conv_stage_normalises_each_channel_of_each_image_like_instance_norm() -> None:
    # The stages use group norm with one group per channel for speed; checkpoints trained with
    # nn.InstanceNorm2d must load into them and compute the same thing.
    from ml.networks.blocks import ConvStage

    stage = ConvStage(3, 8).eval()
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.InstanceNorm2d(8, affine=True, eps=1e-5),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.InstanceNorm2d(8, affine=True, eps=1e-5),
        torch.nn.LeakyReLU(0.01),
    ).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.uniform_(-1, 1)
    stage.layers.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 16, 16) * torch.tensor([1.0, 50.0])[:, None, None, None]
    with torch.no_grad():
        torch.testing.assert_close(stage(images), reference(images), rtol=1e-4, atol=1e-4)


def test_guide_attention_is_softmax_attention_of_every_adjacent_pixel_over_the_guide() -> None:
    from ml.networks.propmask import GuideAttention

    attention = GuideAttention(8).eval()
    adjacent, guide, guide_mask = torch.randn(2, 3, 8, 4, 4), torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        got = attention(adjacent, guide, guide_mask)
        queries = attention.query(adjacent.permute(0, 1, 3, 4, 2).reshape(2, 3 * 16, 8))
        keys = attention.key(guide.flatten(2).transpose(1, 2))
        values = attention.value(guide_mask.flatten(2).transpose(1, 2))
        weights = torch.softmax(queries @ keys.transpose(1, 2) / 8**0.5, dim=-1)
        expected = attention.out(weights @ values).reshape(2, 3, 4, 4, 8).permute(0, 1, 4, 2, 3) + adjacent
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
