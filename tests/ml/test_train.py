"""Training: task sampling follows the PropSAM recipe, the loss falls, runs checkpoint and resume."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from ml import train
from ml.config import TINY_BOX2MASK, TINY_PROPMASK
from ml.data import object_volume, synthetic_case
from ml.networks import Box2Mask, PropMask

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sampler() -> train.TaskSampler:
    rng = np.random.default_rng(3)
    volumes = [object_volume(synthetic_case(rng, f"s{i}")) for i in range(3)]
    return train.TaskSampler({"synthetic": volumes}, {"synthetic": 1.0}, seed=0)


def test_propmask_tasks_have_guides_targets_and_empty_slices_past_the_ends(
    sampler: train.TaskSampler,
) -> None:
    batches = [sampler.propmask_batch(8, 4, 32) for _ in range(6)]
    batch = batches[0]
    assert tuple(batch.guide.shape) == (8, 1, 32, 32) and tuple(batch.guide_mask.shape) == (8, 1, 32, 32)
    assert tuple(batch.adjacent.shape) == (8, 4, 32, 32) and tuple(batch.target.shape) == (8, 4, 32, 32)
    for batch in batches:
        assert torch.all(batch.guide_mask.flatten(1).amax(1) == 1)  # every guide holds the object
        assert torch.equal(batch.present, (batch.target.flatten(2).amax(2) > 0).float())
        assert batch.guide.min() >= -1.5 and batch.guide.max() <= 1.5
    present = torch.cat([batch.present.flatten() for batch in batches])
    assert 0.1 < float(present.mean()) < 0.95  # the present head sees both answers


def test_rollout_tasks_carry_a_source_slice_of_the_object_behind_their_guide() -> None:
    rng = np.random.default_rng(5)
    volumes = [object_volume(synthetic_case(rng, f"r{i}")) for i in range(3)]
    always = train.TaskSampler({"synthetic": volumes}, {"synthetic": 1.0}, seed=1, rollout_chance=1.0)
    never = train.TaskSampler({"synthetic": volumes}, {"synthetic": 1.0}, seed=1, rollout_chance=0.0)

    rolled = always.propmask_batch(12, 4, 32)
    plain = never.propmask_batch(12, 4, 32)
    # A guide on an object's end slice propagating inwards has nothing behind it, and a source whose
    # object lies outside the guide's crop is dropped: about 85 % of tasks keep one (over 60 tasks, since
    # one small batch swings with the random stream).
    with_source = [rolled.rollout] + [always.propmask_batch(12, 4, 32).rollout for _ in range(4)]

    assert float(torch.cat(with_source).float().mean()) > 0.6
    assert torch.all(rolled.source_mask[rolled.rollout].flatten(1).amax(1) == 1)
    assert tuple(rolled.source.shape) == (12, 1, 32, 32)
    assert not plain.rollout.any() and plain.source_mask.max() == 0


def _propmask_answering(value: float) -> PropMask:
    """A tiny PropMask whose mask and present logits are ``value`` everywhere (biases only)."""
    propmask = PropMask(TINY_PROPMASK).eval()
    with torch.no_grad():
        head = propmask.decoder.heads[0]
        head.weight.zero_()
        head.bias.fill_(value)
        final = propmask.present[-1]
        final.weight.zero_()
        final.bias.fill_(value)
    return propmask


def test_rollout_guides_are_replaced_by_the_networks_own_prediction(sampler: train.TaskSampler) -> None:
    batch = sampler.propmask_batch(4, 2, 32)
    batch.rollout = torch.tensor([True, False, True, False])
    batch.source_mask[:] = 1.0
    true_guides = batch.guide_mask.clone()

    replaced = train.apply_rollout_guides(_propmask_answering(10.0), batch, torch.device("cpu"))

    assert replaced == 2
    assert torch.all(batch.guide_mask[[0, 2]] == 1)  # the (all-foreground) prediction is the new guide
    assert torch.equal(batch.guide_mask[[1, 3]], true_guides[[1, 3]])


def test_an_empty_rollout_prediction_keeps_the_true_guide(sampler: train.TaskSampler) -> None:
    batch = sampler.propmask_batch(3, 2, 32)
    batch.rollout = torch.tensor([True, True, True])
    true_guides = batch.guide_mask.clone()

    replaced = train.apply_rollout_guides(_propmask_answering(-10.0), batch, torch.device("cpu"))

    assert replaced == 0
    assert torch.equal(batch.guide_mask, true_guides)


def test_chained_rollouts_walk_up_to_max_hops_slices_of_the_object_towards_their_guide() -> None:
    rng = np.random.default_rng(5)
    volumes = [object_volume(synthetic_case(rng, f"c{i}")) for i in range(3)]
    chained = train.TaskSampler(
        {"synthetic": volumes}, {"synthetic": 1.0}, seed=1, rollout_chance=1.0, max_hops=3
    )

    batches = [chained.propmask_batch(12, 4, 32) for _ in range(5)]

    hops = torch.cat([batch.hops for batch in batches])
    assert set(hops.tolist()) == {0, 1, 2, 3}  # 0: nothing of the object behind the guide, or out of crop
    for batch in batches:
        assert tuple(batch.source.shape) == (12, 3, 32, 32)
        assert torch.equal(batch.rollout, batch.hops > 0)
        for task, used in enumerate(batch.hops.tolist()):
            assert not batch.source[task, used:].any()  # unused chain slots stay empty
            if used:
                assert batch.source[task, :used].flatten(1).abs().amax(1).min() > 0
                assert batch.source_mask[task].max() == 1  # the farthest slice's true mask starts the walk


class _ThresholdNet(torch.nn.Module):
    """Stands in for PropMask: foreground wherever the slice to predict is bright; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, guide: torch.Tensor, guide_mask: torch.Tensor, adjacent: torch.Tensor, all_heads: bool):
        from ml.networks import PropMaskOutput

        self.calls += 1
        logits = torch.where(adjacent > 0, 10.0, -10.0)
        return PropMaskOutput(masks=[logits], present=torch.full(adjacent.shape[:2], 10.0))


def test_a_chained_rollout_guide_is_the_end_of_the_walk_and_a_walk_that_loses_the_object_keeps_the_truth(
    sampler: train.TaskSampler,
) -> None:
    batch = sampler.propmask_batch(3, 2, 32)
    size = batch.guide.shape[-1]
    batch.source = torch.full((3, 3, size, size), 1.0)
    batch.guide[:] = -1.0
    batch.guide[:, :, :8, :8] = 1.0  # the guide slice is bright in one corner only
    batch.source_mask[:] = 1.0
    batch.rollout = torch.tensor([True, True, False])
    batch.hops = torch.tensor([3, 2, 0])
    batch.source[1, 1] = -1.0  # task 1 loses the object on its second step
    true_guides = batch.guide_mask.clone()
    net = _ThresholdNet()

    replaced = train.apply_rollout_guides(net, batch, torch.device("cpu"))  # type: ignore[arg-type]

    assert replaced == 1 and net.calls == 3  # three steps for the longest chain, both tasks in the first two
    assert batch.guide_mask[0, 0, :8, :8].min() == 1 and batch.guide_mask[0].sum() == 64
    assert torch.equal(batch.guide_mask[1:], true_guides[1:])


def test_a_share_of_tasks_sees_the_object_with_inverted_contrast_on_every_slice_at_once() -> None:
    rng = np.random.default_rng(7)
    ramp = torch.linspace(-1.0, 1.0, 32 * 32).reshape(1, 32, 32).repeat(3, 1, 1)
    inverted = 0
    draws = 400
    for _ in range(draws):
        augmented = train.augment_intensity(ramp.clone(), rng)
        signs = {
            bool(np.corrcoef(augmented[channel].flatten(), ramp[channel].flatten())[0, 1] < 0)
            for channel in range(3)
        }
        assert len(signs) == 1, "guide and adjacent slices must keep one contrast"
        inverted += signs.pop()
    assert abs(inverted / draws - train.INVERT_PROBABILITY) < 0.06


def test_box2mask_samples_carry_box_click_and_prior_channels(sampler: train.TaskSampler) -> None:
    inputs, target = sampler.box2mask_batch(48, 32)
    assert tuple(inputs.shape) == (48, 5, 32, 32) and tuple(target.shape) == (48, 1, 32, 32)
    assert (inputs[:, 1].flatten(1).amax(1) > 0).any()  # some boxes
    assert (inputs[:, 2].flatten(1).amax(1) > 0.5).any()  # some positive clicks
    assert (inputs[:, 4].flatten(1).amax(1) > 0).any()  # some prior masks to correct
    assert float((target.flatten(1).amax(1) == 1).float().mean()) > 0.75  # a few are leak corrections


def test_leak_corrections_teach_negative_clicks_to_empty_a_wrong_mask(sampler: train.TaskSampler) -> None:
    samples = [sample for sample in (sampler._wrong_mask_sample(32) for _ in range(30)) if sample is not None]
    assert samples
    for inputs, target in samples:
        assert inputs[3].max() > 0.5 and inputs[4].max() == 1  # negative clicks on a prior mask
        assert target.max() == 0  # the slice is past the object's end


def test_a_filled_prior_swallows_a_kidneys_sinus_and_keeps_the_whole_object() -> None:
    kidney = np.zeros((60, 60), bool)
    yy, xx = np.ogrid[:60, :60]
    kidney[(yy - 30) ** 2 + (xx - 30) ** 2 <= 20**2] = True
    kidney[(yy - 30) ** 2 + (xx - 36) ** 2 <= 8**2] = False  # the sinus
    kidney[28:33, 36:52] = False  # the hilum, a narrow channel out of it

    for seed in range(5):
        prior = train.filled_prior(kidney, np.random.default_rng(seed))

        assert prior is not None
        assert prior[kidney].all()  # nothing of the object is lost
        assert prior[30, 36] and not kidney[30, 36]  # the sinus is filled
        assert prior.sum() > 1.08 * kidney.sum()


def test_a_convex_object_has_no_filled_prior() -> None:
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    assert train.filled_prior(square, np.random.default_rng(0)) is None


def test_a_leaked_prior_reaches_into_a_touching_object_on_one_side_only() -> None:
    object_map = np.zeros((60, 60), np.int16)
    object_map[20:40, 10:30] = 1
    object_map[20:40, 30:50] = 2  # touches object 1 on its right
    image = np.where(object_map > 0, 100.0, 0.0)  # the same brightness: a classical engine would leak here
    truth = object_map == 1

    leaks = [
        train.leaked_prior(truth, image, object_map, 1, np.random.default_rng(seed)) for seed in range(20)
    ]

    found = [leak for leak in leaks if leak is not None]
    assert found
    for prior in found:
        assert prior[truth].all()
        extra = prior & ~truth
        assert extra.sum() >= 0.08 * truth.sum()
        assert (object_map[extra] == 2).all()  # only the touching object, never the dark background


def test_swollen_priors_teach_a_negative_click_that_keeps_the_object() -> None:
    rng = np.random.default_rng(5)
    volumes = [object_volume(synthetic_case(rng, f"t{i}")) for i in range(3)]
    sampler = train.TaskSampler({"synthetic": volumes}, {"synthetic": 1.0}, seed=1)
    kept = 0
    for _ in range(300):
        volume, obj = sampler._pick_object()
        z = (obj.z_first + obj.z_last) // 2
        truth = sampler._object_slice(volume, obj, z)
        prior = train.corrupt_prior(truth, volume, obj, z, sampler.rng)
        if prior.sum() <= truth.sum() or not prior[truth].all():
            continue  # not a swollen prior
        click = train.error_click(truth, prior, [], [])
        assert click is not None and not click[2]  # a negative click, inside the old mask
        assert prior[int(click[0]), int(click[1])]
        kept += 1
    assert kept >= 30  # the answer to these is the object itself, not an empty slice


def test_a_box2mask_only_run_leaves_propmask_untouched(tmp_path: pathlib.Path) -> None:
    from ml.checkpoint import load_weights

    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    common += ["--run", str(tmp_path / "run")]
    train.main([*common, "--max-steps", "2"])
    box_before, prop_before, _ = load_weights(tmp_path / "run" / "last.pt")

    result = train.main([*common, "--max-steps", "3", "--resume", "--networks", "box2mask"])

    box_after, prop_after, _ = load_weights(tmp_path / "run" / "last.pt")
    assert result["step"] == 5 and "prop" not in result["running_loss"]
    for name, value in prop_before.state_dict().items():
        assert torch.equal(value, prop_after.state_dict()[name]), name
    assert any(
        not torch.equal(value, box_after.state_dict()[name])
        for name, value in box_before.state_dict().items()
    )


def test_a_propmask_only_run_at_a_smaller_input_keeps_box2mask_and_saves_the_new_size(
    tmp_path: pathlib.Path,
) -> None:
    from ml.checkpoint import export_weights, load_weights

    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    train.main([*common, "--run", str(tmp_path / "old"), "--max-steps", "2"])
    shipped = export_weights(tmp_path / "old" / "last.pt", tmp_path / "weights")
    box_before, prop_before, _ = load_weights(shipped)
    assert prop_before.config.input_size == 32

    small_run = ["--run", str(tmp_path / "small"), "--max-steps", "2", "--init-weights", str(shipped)]
    result = train.main([*common, *small_run, "--networks", "propmask", "--propmask-input-size", "16"])

    box_after, prop_after, _ = load_weights(tmp_path / "small" / "last.pt")
    assert "box" not in result["running_loss"] and "prop" in result["running_loss"]
    assert prop_after.config.input_size == 16 and box_after.config.input_size == 32
    for name, value in box_before.state_dict().items():
        assert torch.equal(value, box_after.state_dict()[name]), name
    assert any(
        not torch.equal(value, prop_after.state_dict()[name])
        for name, value in prop_before.state_dict().items()
    )


def test_a_propmask_only_run_resumed_without_the_flag_still_leaves_box2mask_untouched(
    tmp_path: pathlib.Path,
) -> None:
    from ml.checkpoint import load_weights

    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    common += ["--run", str(tmp_path / "run")]
    train.main([*common, "--max-steps", "2", "--networks", "propmask"])
    box_before, _, metadata = load_weights(tmp_path / "run" / "last.pt")
    assert metadata["networks"] == "propmask"

    result = train.main([*common, "--max-steps", "3", "--resume"])

    box_after, _, _ = load_weights(tmp_path / "run" / "last.pt")
    assert result["step"] == 5 and "box" not in result["running_loss"]
    for name, value in box_before.state_dict().items():
        assert torch.equal(value, box_after.state_dict()[name]), name


def test_a_propmask_input_size_is_refused_for_a_resumed_run_or_a_size_the_stages_cannot_halve(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", "--propmask-input-size", "64"])
    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--data-dir", str(tmp_path / "no-data")]
    with pytest.raises(ValueError, match="divisible"):
        train.main(
            [*common, "--run", str(tmp_path / "odd"), "--propmask-input-size", "20", "--max-steps", "1"]
        )


def test_a_student_that_answers_like_its_teacher_has_no_distillation_loss(sampler: train.TaskSampler) -> None:
    torch.manual_seed(0)
    teacher = PropMask(TINY_PROPMASK).eval()
    seen_by_teacher = sampler.propmask_batch(3, 2, 32)
    same_size = train.resized_batch(seen_by_teacher, 32)
    answer = train.teacher_answer(teacher, seen_by_teacher, same_size, torch.device("cpu"))
    student = PropMask(TINY_PROPMASK).eval()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        own = student(same_size.guide, same_size.guide_mask, same_size.adjacent, all_heads=False)
        next(student.parameters()).add_(0.5)
        changed = student(same_size.guide, same_size.guide_mask, same_size.adjacent, all_heads=False)

    assert abs(float(train.distillation_loss(own, answer))) < 1e-5
    assert float(train.distillation_loss(changed, answer)) > 1e-3


def test_a_downsampled_task_keeps_binary_guides_and_the_objects_area(sampler: train.TaskSampler) -> None:
    batch = sampler.propmask_batch(4, 2, 32)
    small = train.resized_batch(batch, 16)

    assert small.guide.shape == (4, 1, 16, 16) and small.adjacent.shape == (4, 2, 16, 16)
    assert set(torch.unique(small.guide_mask).tolist()) <= {0.0, 1.0}
    # A coarse pixel's target is the share of the object in it, so the object keeps its area.
    assert torch.allclose(small.target.sum(dim=(2, 3)) * 4, batch.target.sum(dim=(2, 3)))
    assert torch.equal(small.present, batch.present)


def test_a_distilled_run_trains_a_smaller_propmask_and_records_its_teacher(tmp_path: pathlib.Path) -> None:
    from ml.checkpoint import export_weights, load_training_state, load_weights

    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    train.main([*common, "--run", str(tmp_path / "old"), "--max-steps", "2"])
    shipped = export_weights(tmp_path / "old" / "last.pt", tmp_path / "weights")
    teacher_before = load_weights(shipped)[1].state_dict()
    student_run = ["--run", str(tmp_path / "student"), "--max-steps", "2", "--init-weights", str(shipped)]
    student_run += ["--networks", "propmask", "--propmask-input-size", "16", "--teacher", str(shipped)]

    result = train.main([*common, *student_run, "--distill-weight", "3"])

    state = load_training_state(tmp_path / "student" / "last.pt")
    assert result["running_loss"]["distill"] > 0.0
    assert state["metadata"]["teacher"] == str(shipped) and state["metadata"]["distill_weight"] == 3.0
    assert state["networks"][1].config.input_size == 16
    teacher_after = load_weights(shipped)[1].state_dict()
    assert all(torch.equal(value, teacher_after[name]) for name, value in teacher_before.items())
    assert any(
        not torch.equal(value, state["networks"][1].state_dict()[name])
        for name, value in teacher_before.items()
    )


def test_a_teacher_is_refused_when_it_is_missing_smaller_than_the_student_or_has_nothing_to_teach_and_a_weight_needs_one(
    tmp_path: pathlib.Path,
) -> None:
    from ml.checkpoint import export_weights

    with pytest.raises(SystemExit):
        train.parse_args(["--networks", "box2mask", "--teacher", str(tmp_path / "any.pt")])
    with pytest.raises(SystemExit):
        train.parse_args(["--teacher", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit):
        train.parse_args(["--distill-weight", "3"])  # nothing to weigh without a teacher
    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    train.main([*common, "--run", str(tmp_path / "old"), "--max-steps", "1"])
    shipped = export_weights(tmp_path / "old" / "last.pt", tmp_path / "weights")
    larger_student = [
        "--init-weights",
        str(shipped),
        "--propmask-input-size",
        "64",
        "--teacher",
        str(shipped),
    ]
    with pytest.raises(ValueError, match="smaller than the student"):
        train.main([*common, "--run", str(tmp_path / "big"), "--max-steps", "1", *larger_student])
    assert not (tmp_path / "big" / "last.pt").exists()


def test_a_corrections_only_sampler_gives_every_sample_a_mask_to_correct() -> None:
    rng = np.random.default_rng(4)
    volumes = {"synthetic": [object_volume(synthetic_case(rng, f"c{i}")) for i in range(3)]}
    corrections = train.TaskSampler(volumes, {"synthetic": 1.0}, seed=2, correction_share=1.0)
    first_prompts = train.TaskSampler(volumes, {"synthetic": 1.0}, seed=2, correction_share=0.0)

    with_prior = float((corrections.box2mask_batch(60, 32)[0][:, 4].flatten(1).amax(1) > 0).float().mean())
    without = float((first_prompts.box2mask_batch(60, 32)[0][:, 4].flatten(1).amax(1) > 0).float().mean())

    assert with_prior > 0.9  # all but priors eroded away on tiny objects
    assert without < 0.25  # only the leak corrections past the object's ends
    with pytest.raises(SystemExit):
        train.parse_args(["--box2mask-corrections", "1.5"])


def test_the_slice_dice_term_counts_an_objects_small_last_slice_as_much_as_its_largest() -> None:
    target = torch.zeros((1, 3, 32, 32))
    target[0, 0, 4:28, 4:28] = 1.0  # the object's large slice, 576 px
    target[0, 1, 10:12, 10:12] = 1.0  # its last slice, 4 px; slice 2 lies past its end
    confident = torch.full_like(target, -20.0)
    confident[0, 0][target[0, 0] > 0] = 20.0  # the large slice right, the small one given up
    batch_dice = train.segmentation_loss([confident], target)
    per_slice = train.slice_dice_loss(confident, target)
    assert per_slice > 0.39, "one of the two non-empty slices is missed entirely (its smoothed loss 0.8)"
    assert per_slice > 5 * batch_dice, "the area-weighted loss hardly notices the missed slice"
    confident[0, 1][target[0, 1] > 0] = 20.0
    assert train.slice_dice_loss(confident, target) < 0.01, "the empty slice past the end does not count"
    assert train.slice_dice_loss(confident, torch.zeros_like(target)) == 0.0
    with pytest.raises(SystemExit):
        train.parse_args(["--slice-dice-weight", "-1"])


def test_loss_falls_when_fitting_a_fixed_batch(sampler: train.TaskSampler) -> None:
    torch.manual_seed(0)
    propmask, box2mask = PropMask(TINY_PROPMASK), Box2Mask(TINY_BOX2MASK)
    batch = sampler.propmask_batch(4, 2, 32)
    box_inputs, box_target = sampler.box2mask_batch(8, 32)
    optimizer = torch.optim.Adam([*propmask.parameters(), *box2mask.parameters()], lr=3e-3)
    losses = []
    for _ in range(60):
        output = propmask(batch.guide, batch.guide_mask, batch.adjacent)
        loss = train.segmentation_loss(output.masks, batch.target) + train.segmentation_loss(
            box2mask(box_inputs), box_target
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])


def test_a_run_checkpoints_and_resumes_at_the_right_step(tmp_path: pathlib.Path) -> None:
    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += [
        "--run",
        str(tmp_path / "run"),
        "--data-dir",
        str(tmp_path / "no-data"),
        "--val-cases",
        "0",
        "0",
    ]
    first = train.main([*common, "--minutes", "5", "--max-steps", "3"])
    assert first["step"] == 3
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()
    second = train.main([*common, "--minutes", "5", "--max-steps", "2", "--resume"])
    assert second["step"] == 5
    assert all(np.isfinite(value) for value in second["running_loss"].values())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("resumed at step 3" in entry["message"] for entry in log)


def test_a_new_run_continues_from_shipped_weights_when_the_run_folder_is_gone(tmp_path: pathlib.Path) -> None:
    from ml.checkpoint import export_weights, load_weights

    common = ["--datasets", "--synthetic", "3", "--preset", "tiny", "--tasks", "2", "--box-samples", "2"]
    common += ["--data-dir", str(tmp_path / "no-data"), "--val-cases", "0", "0", "--minutes", "5"]
    train.main([*common, "--run", str(tmp_path / "old"), "--max-steps", "3"])
    shipped = export_weights(tmp_path / "old" / "last.pt", tmp_path / "weights")
    _, shipped_propmask, _ = load_weights(shipped)

    result = train.main(
        [*common, "--run", str(tmp_path / "new"), "--max-steps", "2", "--init-weights", str(shipped)]
    )

    assert result["step"] == 5  # counting on from the shipped step, not from zero
    _, continued, _ = load_weights(tmp_path / "new" / "last.pt")
    assert continued.config == shipped_propmask.config
    log = [json.loads(line) for line in (tmp_path / "new" / "log.jsonl").read_text().splitlines()]
    assert any("initialised from" in entry["message"] and "step 3" in entry["message"] for entry in log)


def test_validation_dice_is_one_for_a_perfect_segmentation() -> None:
    mask = np.zeros((4, 8, 8), dtype=bool)
    mask[1:3, 2:6, 2:6] = True
    assert train.dice(mask, mask) == 1.0
    assert train.dice(mask, np.zeros_like(mask)) == 0.0


def test_upgrading_the_present_head_keeps_every_other_weight_and_optimizer_moment() -> None:
    from dataclasses import replace

    old = PropMask(replace(TINY_PROPMASK, present_features="bottleneck"))
    optimizer = torch.optim.AdamW(old.parameters(), lr=1e-3)
    output = old(torch.randn(1, 1, 32, 32), torch.ones(1, 1, 32, 32), torch.randn(1, 2, 32, 32))
    (output.masks[0].mean() + output.present.mean()).backward()
    optimizer.step()
    upgraded, state = train.upgrade_present_head(old, "decoder", {"propmask": optimizer.state_dict()})
    assert upgraded.config.present_features == "decoder"
    for key, value in old.state_dict().items():
        if not key.startswith("present."):
            assert torch.equal(value, upgraded.state_dict()[key])
    fresh = torch.optim.AdamW(upgraded.parameters(), lr=1e-3)
    fresh.load_state_dict(state["propmask"])  # loads: the head's moments were dropped, nothing else
    assert len(fresh.state_dict()["state"]) == len(optimizer.state_dict()["state"]) - 4


def test_dataset_weights_split_the_real_data_share_and_reject_unknown_names() -> None:
    names = ["Dataset001_Hippocampus", "Dataset002_LeftAtrium"]
    equal = train.task_weights(names, [], 0.3)
    assert equal == pytest.approx({names[0]: 0.35, names[1]: 0.35, "synthetic": 0.3})
    heavier = train.task_weights(names, ["Dataset001_Hippocampus=3"], 0.2)
    assert heavier == pytest.approx({names[0]: 0.6, names[1]: 0.2, "synthetic": 0.2})
    for bad in ("Dataset009_Spleen=2", "Dataset001_Hippocampus", "Dataset001_Hippocampus=x", f"{names[1]}=0"):
        with pytest.raises(ValueError, match="--dataset-weight"):
            train.task_weights(names, [bad], 0.3)


def test_a_final_sitting_can_anneal_over_its_whole_budget() -> None:
    base, budget = 2e-4, 100.0
    whole = [
        train.learning_rate(base, 1000, elapsed, budget, anneal_fraction=1.0) for elapsed in (0, 50, 100)
    ]
    assert whole[0] == pytest.approx(base)
    assert whole[1] == pytest.approx(base * (0.05 + 0.95 * 0.5))
    assert whole[2] == pytest.approx(base * 0.05)
    # The default keeps 70 % of the budget at the full rate.
    assert train.learning_rate(base, 1000, 60, budget) == pytest.approx(base)
    assert train.learning_rate(base, 1000, 85, budget) < base


def test_an_anneal_fraction_outside_zero_to_one_is_refused_before_anything_loads() -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--anneal-fraction", "0"])
    with pytest.raises(SystemExit):
        train.parse_args(["--anneal-fraction", "1.5"])
