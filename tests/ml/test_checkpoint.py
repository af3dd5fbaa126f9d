"""Checkpoints rebuild their networks from their own stored configuration."""

from __future__ import annotations

import pathlib

import pytest
import torch

from ml.checkpoint import (
    WEIGHTS_FILE,
    attach_corrections,
    export_weights,
    load_all_weights,
    load_small_crop_propmask,
    load_training_state,
    load_weights,
    main,
    replace_box2mask,
    replace_propmask,
    save_training_state,
    save_weights,
)
from ml.config import Box2MaskConfig, PropMaskConfig
from ml.networks import Box2Mask, PropMask

torch.set_num_threads(1)

BOX = Box2MaskConfig(base_width=4, max_width=16, n_stages=4, input_size=32, deep_supervision_heads=2)
PROP = PropMaskConfig(
    base_width=6, max_width=24, n_stages=4, input_size=32, attention_stages=3, deep_supervision_heads=2
)


def _inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 1, 32, 32, generator=generator),
        (torch.rand(1, 1, 32, 32, generator=generator) > 0.5).float(),
        torch.randn(1, 3, 32, 32, generator=generator),
        torch.randn(2, 5, 32, 32, generator=generator),
    )


def _outputs(box2mask: Box2Mask, propmask: PropMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    guide, mask, adjacent, box_inputs = _inputs()
    with torch.no_grad():
        prop = propmask.eval()(guide, mask, adjacent)
        return prop.masks[0], prop.present, box2mask.eval()(box_inputs)[0]


def _assert_same_propmask_answers(
    loaded: PropMask, expected: PropMask, inputs: tuple[torch.Tensor, ...] | None = None
) -> None:
    """Masks agree within float16 storage error on the same ``(guide, mask, adjacent)`` inputs."""
    guide, mask, adjacent = inputs if inputs is not None else _inputs()[:3]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.eval()(guide, mask, adjacent).masks[0],
            expected.eval()(guide, mask, adjacent).masks[0],
            rtol=0.05,
            atol=0.05,
        )


def test_weights_round_trip_rebuilds_the_same_networks(tmp_path: pathlib.Path) -> None:
    box2mask, propmask = Box2Mask(BOX), PropMask(PROP)
    save_weights(tmp_path / WEIGHTS_FILE, box2mask, propmask, {"note": "test"}, half=False)
    loaded_box, loaded_prop, metadata = load_weights(tmp_path / WEIGHTS_FILE)
    assert loaded_prop.config == PROP and loaded_box.config == BOX
    assert metadata == {"note": "test"}
    for before, after in zip(_outputs(box2mask, propmask), _outputs(loaded_box, loaded_prop), strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_half_precision_weights_stay_close(tmp_path: pathlib.Path) -> None:
    box2mask, propmask = Box2Mask(BOX), PropMask(PROP)
    save_weights(tmp_path / WEIGHTS_FILE, box2mask, propmask, {})
    loaded_box, loaded_prop, _ = load_weights(tmp_path / WEIGHTS_FILE)
    for before, after in zip(_outputs(box2mask, propmask), _outputs(loaded_box, loaded_prop), strict=True):
        torch.testing.assert_close(before, after, rtol=0.05, atol=0.05)


def test_training_state_resumes_optimizer_and_step_and_exports(tmp_path: pathlib.Path) -> None:
    box2mask, propmask = Box2Mask(BOX), PropMask(PROP)
    optimizer = torch.optim.AdamW(propmask.parameters(), lr=1e-3)
    guide, mask, adjacent, _ = _inputs()
    propmask(guide, mask, adjacent).masks[0].mean().backward()
    optimizer.step()
    save_training_state(
        tmp_path / "last.pt",
        box2mask,
        propmask,
        {"propmask": optimizer},
        17,
        {"trained_seconds": 3.0},
        {"x": 1},
    )
    state = load_training_state(tmp_path / "last.pt")
    assert state["step"] == 17 and state["rng"] == {"x": 1}
    assert state["optimizers"]["propmask"]["state"]  # Adam moments were stored
    _, restored = state["networks"]
    for before, after in zip(
        _outputs(box2mask, propmask), _outputs(state["networks"][0], restored), strict=True
    ):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    exported = export_weights(tmp_path / "last.pt", tmp_path / "weights")
    assert exported.name == WEIGHTS_FILE
    assert load_weights(exported)[2]["step"] == 17


def test_missing_or_foreign_files_are_reported(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "nothing.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a PropLabel checkpoint"):
        load_weights(tmp_path / "foreign.pt")


def test_a_corrections_network_is_attached_without_touching_the_shipped_networks(
    tmp_path: pathlib.Path,
) -> None:
    box2mask, propmask = Box2Mask(BOX), PropMask(PROP)
    save_weights(tmp_path / WEIGHTS_FILE, box2mask, propmask, {"step": 5})
    assert load_all_weights(tmp_path / WEIGHTS_FILE)[2] is None  # older files have none
    before = _outputs(*load_weights(tmp_path / WEIGHTS_FILE)[:2])
    fine_tuned = Box2Mask(BOX)
    save_training_state(tmp_path / "tuned.pt", fine_tuned, PropMask(PROP), {}, 9, {"command": "c"}, {})

    attach_corrections(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")

    loaded_box, loaded_prop, corrections, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    for old, new in zip(before, _outputs(loaded_box, loaded_prop), strict=True):
        torch.testing.assert_close(old, new, rtol=0, atol=0)
    assert corrections is not None and corrections.config == BOX
    box_inputs = _inputs()[3]
    with torch.no_grad():
        expected = fine_tuned.eval()(box_inputs)[0]
        torch.testing.assert_close(corrections.eval()(box_inputs)[0], expected, rtol=0.05, atol=0.05)
    assert metadata["step"] == 5 and metadata["corrections_box2mask"]["step"] == 9


def test_a_corrections_network_of_another_shape_is_refused(tmp_path: pathlib.Path) -> None:
    other = Box2Mask(
        Box2MaskConfig(base_width=8, max_width=16, n_stages=4, input_size=32, deep_supervision_heads=2)
    )
    with pytest.raises(ValueError, match="same configuration"):
        save_weights(tmp_path / WEIGHTS_FILE, Box2Mask(BOX), PropMask(PROP), {}, corrections_box2mask=other)
    assert not (tmp_path / WEIGHTS_FILE).exists()


def test_a_blended_corrections_network_lies_halfway_between_the_two(tmp_path: pathlib.Path) -> None:
    box2mask = Box2Mask(BOX)
    save_weights(tmp_path / WEIGHTS_FILE, box2mask, PropMask(PROP), {}, half=False)
    fine_tuned = Box2Mask(BOX)
    save_training_state(tmp_path / "tuned.pt", fine_tuned, PropMask(PROP), {}, 9, {}, {})

    attach_corrections(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=0.5)

    shipped_box, _, corrections, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    assert corrections is not None and metadata["corrections_box2mask"]["blend"] == 0.5
    name = next(key for key, value in box2mask.state_dict().items() if value.is_floating_point())
    expected = 0.5 * box2mask.state_dict()[name] + 0.5 * fine_tuned.state_dict()[name]
    torch.testing.assert_close(corrections.state_dict()[name], expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(
        shipped_box.state_dict()[name], box2mask.state_dict()[name], rtol=1e-3, atol=1e-3
    )
    with pytest.raises(ValueError, match="blend"):
        attach_corrections(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=0.0)


def test_replacing_the_first_prompt_box2mask_keeps_propmask_and_the_corrections_network(
    tmp_path: pathlib.Path,
) -> None:
    propmask, corrections = PropMask(PROP), Box2Mask(BOX)
    save_weights(
        tmp_path / WEIGHTS_FILE,
        Box2Mask(BOX),
        propmask,
        {"step": 5},
        half=False,
        corrections_box2mask=corrections,
    )
    fine_tuned = Box2Mask(BOX)
    save_training_state(tmp_path / "tuned.pt", fine_tuned, PropMask(PROP), {}, 9, {"command": "c"}, {})

    replace_box2mask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")

    loaded_box, loaded_prop, loaded_corrections, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    _assert_same_propmask_answers(loaded_prop, propmask)
    box_inputs = _inputs()[3]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded_box.eval()(box_inputs)[0], fine_tuned.eval()(box_inputs)[0], rtol=0.05, atol=0.05
        )
        assert loaded_corrections is not None
        torch.testing.assert_close(
            loaded_corrections.eval()(box_inputs)[0], corrections.eval()(box_inputs)[0], rtol=0.05, atol=0.05
        )
    assert metadata["step"] == 5 and metadata["box2mask_fine_tune"]["step"] == 9


def test_a_blended_first_prompt_box2mask_lies_halfway_and_a_bad_blend_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    box2mask = Box2Mask(BOX)
    save_weights(tmp_path / WEIGHTS_FILE, box2mask, PropMask(PROP), {}, half=False)
    fine_tuned = Box2Mask(BOX)
    save_training_state(tmp_path / "tuned.pt", fine_tuned, PropMask(PROP), {}, 9, {}, {})
    with pytest.raises(ValueError, match="blend"):
        replace_box2mask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=1.5)
    name = next(key for key, value in box2mask.state_dict().items() if value.is_floating_point())
    unchanged = load_all_weights(tmp_path / WEIGHTS_FILE)[0].state_dict()[name]
    torch.testing.assert_close(unchanged, box2mask.state_dict()[name], rtol=0, atol=0)

    replace_box2mask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=0.5)

    blended = load_all_weights(tmp_path / WEIGHTS_FILE)[0].state_dict()[name]
    expected = 0.5 * box2mask.state_dict()[name] + 0.5 * fine_tuned.state_dict()[name]
    torch.testing.assert_close(blended, expected, rtol=1e-3, atol=1e-3)


def test_replacing_propmask_keeps_both_box2masks_and_carries_the_new_input_size(
    tmp_path: pathlib.Path,
) -> None:
    import dataclasses

    box2mask, corrections = Box2Mask(BOX), Box2Mask(BOX)
    save_weights(
        tmp_path / WEIGHTS_FILE,
        box2mask,
        PropMask(PROP),
        {"step": 5},
        half=False,
        corrections_box2mask=corrections,
    )
    smaller = PropMask(dataclasses.replace(PROP, input_size=16))
    save_training_state(tmp_path / "tuned.pt", Box2Mask(BOX), smaller, {}, 9, {"command": "c"}, {})

    replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")

    loaded_box, loaded_prop, loaded_corrections, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    assert loaded_prop.config.input_size == 16 and loaded_box.config.input_size == 32
    generator = torch.Generator().manual_seed(0)
    guide, adjacent = (
        torch.randn(1, 1, 16, 16, generator=generator),
        torch.randn(1, 3, 16, 16, generator=generator),
    )
    mask = (torch.rand(1, 1, 16, 16, generator=generator) > 0.5).float()
    _assert_same_propmask_answers(loaded_prop, smaller, (guide, mask, adjacent))
    box_inputs = _inputs()[3]
    with torch.no_grad():
        close = {"rtol": 0.05, "atol": 0.05}  # the file stores float16
        torch.testing.assert_close(loaded_box.eval()(box_inputs)[0], box2mask.eval()(box_inputs)[0], **close)
        assert loaded_corrections is not None
        torch.testing.assert_close(
            loaded_corrections.eval()(box_inputs)[0], corrections.eval()(box_inputs)[0], **close
        )
    assert metadata["step"] == 5 and metadata["propmask_fine_tune"]["step"] == 9


def test_a_blended_propmask_lies_halfway_and_a_blend_across_input_sizes_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    import dataclasses

    propmask = PropMask(PROP)
    save_weights(tmp_path / WEIGHTS_FILE, Box2Mask(BOX), propmask, {"step": 5}, half=False)
    fine_tuned = PropMask(PROP)
    save_training_state(tmp_path / "tuned.pt", Box2Mask(BOX), fine_tuned, {}, 9, {}, {})
    smaller = PropMask(dataclasses.replace(PROP, input_size=16))
    save_training_state(tmp_path / "smaller.pt", Box2Mask(BOX), smaller, {}, 9, {}, {})
    name = next(key for key, value in propmask.state_dict().items() if value.is_floating_point())
    with pytest.raises(ValueError, match="same configuration"):
        replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "smaller.pt", blend=0.5)
    with pytest.raises(ValueError, match="blend"):
        replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=0.0)
    with pytest.raises(SystemExit):
        main(["replace-propmask", str(tmp_path / WEIGHTS_FILE), str(tmp_path / "tuned.pt"), "--blend", "1.5"])
    unchanged = load_all_weights(tmp_path / WEIGHTS_FILE)[1].state_dict()[name]
    torch.testing.assert_close(unchanged, propmask.state_dict()[name], rtol=0, atol=0)

    replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", blend=0.5)

    _, blended, _, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    expected = 0.5 * propmask.state_dict()[name] + 0.5 * fine_tuned.state_dict()[name]
    torch.testing.assert_close(blended.state_dict()[name], expected, rtol=1e-3, atol=1e-3)
    assert metadata["propmask_fine_tune"]["blend"] == 0.5


def test_a_propmask_kept_for_small_crops_survives_every_later_rewrite_of_the_file(
    tmp_path: pathlib.Path,
) -> None:
    import dataclasses

    original = PropMask(PROP)
    save_weights(tmp_path / WEIGHTS_FILE, Box2Mask(BOX), original, {"step": 5}, half=False)
    assert load_small_crop_propmask(tmp_path / WEIGHTS_FILE) is None
    smaller = PropMask(dataclasses.replace(PROP, input_size=16))
    save_training_state(tmp_path / "tuned.pt", Box2Mask(BOX), smaller, {}, 9, {"command": "c"}, {})

    replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt", keep_for_small_crops=True)
    attach_corrections(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")
    replace_box2mask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")

    _, main, _, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    kept = load_small_crop_propmask(tmp_path / WEIGHTS_FILE)
    assert main.config.input_size == 16 and kept is not None and kept.config == PROP
    _assert_same_propmask_answers(kept, original)
    assert "small_crop_propmask" in metadata

    replace_propmask(tmp_path / WEIGHTS_FILE, tmp_path / "tuned.pt")  # without the flag: the slot stays
    assert load_small_crop_propmask(tmp_path / WEIGHTS_FILE).config == PROP
    # The kept network's provenance still names the original PropMask (step 5), not a later fine-tune.
    _, _, _, metadata = load_all_weights(tmp_path / WEIGHTS_FILE)
    assert metadata["small_crop_propmask"]["step"] == 5
    assert metadata["small_crop_propmask"]["propmask_fine_tune"] is None
    assert [record["step"] for record in metadata["propmask_history"]] == [9]
