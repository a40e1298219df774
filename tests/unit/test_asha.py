"""ASHA's rule (detr_ray/tune/rungs.py) on numbers worked by hand, and its Tune
scheduler keeping its rungs for a resumed sweep (detr_ray/tune/asha.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from detr_ray.storage import StorageOptions
from detr_ray.tune.rungs import RUNGS_FILE, Rungs, milestones


def test_the_rungs_are_at_grace_times_powers_of_the_reduction_factor_within_max_t():
    assert milestones(1, 10, 2) == [1, 2, 4, 8]
    assert milestones(1, 3, 2) == [1, 2]
    assert milestones(2, 2, 3) == [2]
    assert milestones(1, 9, 3) == [1, 3, 9]


def test_a_trial_below_the_cutoff_of_the_rewards_recorded_before_it_stops():
    rungs = Rungs(milestones(1, 10, 2), 2)
    assert rungs.judge("a", 1, 2.0) is False  # first at the rung: nothing to compare with
    assert rungs.judge("b", 1, 4.0) is False  # 4 >= median of [2]
    assert rungs.cutoff(1) == pytest.approx(3.0)  # median of [2, 4]
    assert rungs.judge("c", 1, 1.0) is True  # 1 < 3
    assert rungs.cutoff(1) == pytest.approx(2.0)  # median of [1, 2, 4]
    # between rungs, or at a rung already judged: nothing recorded, it goes on
    assert rungs.judge("b", 1.5, -100.0) is None
    assert rungs.recorded[1.0] == {"a": 2.0, "b": 4.0, "c": 1.0}
    # the next rung has its own records
    assert rungs.judge("b", 2, 5.0) is False
    assert rungs.judge("a", 2, 3.0) is True  # 3 < 5
    assert rungs.recorded[2.0] == {"b": 5.0, "a": 3.0}


def test_with_a_reduction_factor_of_3_the_cutoff_is_the_two_thirds_quantile():
    rungs = Rungs([1, 3], 3)
    for trial, reward in (("a", 1.0), ("b", 2.0), ("c", 4.0)):
        rungs.judge(trial, 1, reward)
    # sorted [1, 2, 4]; position 2 x 2/3 = 1.333: 2 + 0.333 x (4 - 2)
    assert rungs.cutoff(1) == pytest.approx(2 + (4 - 2) / 3)
    assert rungs.judge("d", 1, 2.6) is True and rungs.judge("e", 1, 2.7) is False


def test_the_records_read_back_from_json_judge_the_same():
    rungs = Rungs([1, 2], 2)
    rungs.judge("a", 1, -1.0)
    rungs.judge("b", 1, -3.0)
    again = Rungs.from_json(rungs.to_json(), [1, 2], 2)
    assert again.recorded == rungs.recorded
    assert again.judge("c", 1, -2.5) is rungs.judge("c", 1, -2.5) is True  # -2.5 < -2


@dataclass
class _Trial:  # what the scheduler reads of Tune's trial
    trial_id: str


def test_a_restored_scheduler_judges_new_trials_against_the_rungs_it_recorded(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    from detr_ray.tune.asha import ResumableASHA

    def scheduler() -> ResumableASHA:
        made = ResumableASHA(str(tmp_path), StorageOptions(), max_t=3, grace_period=1,
                             reduction_factor=2)  # fmt: skip
        assert made.set_search_properties("loss", "min")
        return made

    first = scheduler()
    assert first.on_trial_result(None, _Trial("a"), {"epoch": 1, "loss": 1.0}) == "CONTINUE"
    assert first.on_trial_result(None, _Trial("b"), {"epoch": 1, "loss": 3.0}) == "STOP"
    assert first.on_trial_result(None, _Trial("a"), {"epoch": 3, "loss": 0.5}) == "STOP"  # max_t
    assert (tmp_path / RUNGS_FILE).is_file()
    # As Tune rebuilds it on --resume: a new object, the same folder. Rewards are
    # -loss: [-1, -3] at epoch 1, cutoff -2; a loss of 2.5 is below it.
    resumed = scheduler()
    result = {"epoch": 1, "loss": 2.5}
    assert resumed.on_trial_result(None, _Trial("c"), result) == TrialScheduler.STOP
    # a scheduler without those records would have let it go on
    (tmp_path / RUNGS_FILE).unlink()
    assert scheduler().on_trial_result(None, _Trial("c"), result) == TrialScheduler.CONTINUE
    # results without the metric (a report before any evaluation) change nothing
    assert resumed.on_trial_result(None, _Trial("d"), {"epoch": 1}) == "CONTINUE"
    assert resumed.set_search_properties("loss", "min")  # a restore passes them again
    assert not resumed.set_search_properties("val/AP", "max")


def test_damaged_records_are_an_error_naming_the_file(tmp_path):
    from detr_ray.errors import ConfigError
    from detr_ray.tune.asha import ResumableASHA

    (tmp_path / RUNGS_FILE).write_text('{"1.0": {"a": -1.0')  # cut short by a kill
    scheduler = ResumableASHA(str(tmp_path), StorageOptions(), max_t=3, grace_period=1,
                              reduction_factor=2)  # fmt: skip
    scheduler.set_search_properties("loss", "min")
    with pytest.raises(ConfigError, match=rf"{RUNGS_FILE}: ASHA's records .* delete the file"):
        scheduler.on_trial_result(None, _Trial("a"), {"epoch": 1, "loss": 1.0})
