"""The hyperparameter search's pure parts: ASHA's rungs, the choice of the best trial, the space, and
the `train.search` section as it travels from the YAML to `python -m training` flags."""

from __future__ import annotations

import math

import pytest

from jobs.config import parse_config
from jobs.errors import ConfigError
from training.contract import SearchSettings as Search
from training.contract import TrainSettings as Settings
from training.search import apply, best_trial, rungs, searcher, space, startup_trials


def _cfg(tmp_path, train: dict, folds: int = 5):
    return parse_config({"dataset": "d", "kind": "tabular", "lake_root": str(tmp_path),
                         "source": {"path": "x", "format": "csv"}, "columns": {"label": "y", "features": ["a"]},
                         "split": {"folds": folds}, "train": train})  # fmt: skip


def test_asha_compares_trials_after_grace_times_powers_of_the_reduction():
    assert rungs(5, 1, 2) == [1, 2, 4]
    assert rungs(10, 2, 3) == [2, 6]
    assert rungs(2, 1, 2) == [1]
    assert rungs(3, 3, 2) == []  # grace reaches the last fold: nothing is stopped


def test_tpe_starts_from_a_third_of_the_trials_at_random_between_2_and_10():
    assert [startup_trials(n) for n in (1, 3, 6, 9, 12, 30, 100)] == [2, 2, 2, 3, 4, 10, 10]


def test_bayesian_draws_come_from_a_seeded_tpe_started_by_a_third_of_the_trials():
    import optuna
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    search = Search(trials=9, algorithm="bayesian")
    first = []
    for _ in range(2):  # the same seed: the same configurations, in order, after results are told
        algorithm = searcher(search, "mean_macro_f1", seed=7)
        assert isinstance(algorithm, OptunaSearch)
        assert isinstance(algorithm._sampler, optuna.samplers.TPESampler) and algorithm._sampler._n_startup_trials == 3
        algorithm.set_search_properties("mean_macro_f1", "max", space(search))
        drawn = []
        for i in range(5):
            config = algorithm.suggest(f"t{i}")
            drawn.append(config)
            algorithm.on_trial_complete(f"t{i}", {"mean_macro_f1": config["lr"] * 100})
        first.append(drawn)
    assert first[0] == first[1] and len({d["lr"] for d in first[0]}) == 5
    assert isinstance(searcher(Search(trials=9), "mean_macro_f1", seed=7), BasicVariantGenerator)


def test_the_best_trial_trained_every_fold():
    cfg = {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.1, "batch_size": 32}
    trials = [
        {"scores": [0.95], "score": 0.95, "config": cfg},  # stopped early: its one fold does not count
        {"scores": [0.8, 0.7, 0.9], "score": 0.8, "config": cfg},
        {"scores": [0.9, 0.9, 0.9], "score": 0.9, "config": cfg, "error": "worker died"},  # failed
        {"scores": [0.9, 0.8, 0.7], "score": 0.8, "config": cfg},  # a tie: the first one wins
        {"scores": [math.nan] * 3, "score": math.nan, "config": cfg},
    ]
    assert best_trial(trials, 3) is trials[1]
    assert best_trial(trials[:1], 3) is None


def test_the_space_and_a_trials_settings():
    from ray import tune

    s = space(Search(lr=(1e-3, 1e-3), dropout=(0.0, 0.4), batch_size=(64, 32, 64)))
    assert s["lr"] == 1e-3  # a range of one value is a constant
    assert isinstance(s["weight_decay"], tune.search.sample.Float) and s["batch_size"].categories == [32, 64]
    got = apply(Settings(epochs=7), {"lr": 0.02, "weight_decay": 1e-5, "dropout": 0.3, "batch_size": 128})
    assert (got.lr, got.weight_decay, got.dropout, got.batch_size, got.epochs) == (0.02, 1e-5, 0.3, 128, 7)


@pytest.mark.parametrize("flags, message", [
    (["--search-trials", "4", "--search-algorithm", "grid"], "search.algorithm: Input should be 'random' or 'bayesian'"),
    (["--search-trials", "4", "--search-metric", "log_loss"], "search.metric"),
    (["--search-trials", "4", "--search-lr", "0,1e-2"], "search.lr must be [low, high] with 0 < low <= high"),
    (["--search-trials", "4", "--search-dropout", "0.2,1.0"], "search.dropout must be [low, high]"),
    (["--search-trials", "4", "--search-lr", "1e-3"], "search.lr"),
    (["--search-trials", "4", "--search-reduction", "1"], "search.reduction"),
    (["--search-trials", "1"], "search.trials"),
    (["--dropout", "1.5"], "dropout: Input should be less than 1"),
])  # fmt: skip
def test_a_bad_flag_is_named_by_the_one_schema(flags, message):
    """`python -m training`'s flags are validated by the same schema as the YAML's train section."""
    from training.__main__ import parser
    from training.contract import from_flags

    with pytest.raises(ValueError, match="invalid training settings") as err:
        from_flags(parser().parse_args(["--table", "t", *flags]))
    assert message in str(err.value)
    with pytest.raises(ValueError, match="between 1 and the table's 5 folds"):
        Search(trials=4, folds=6).check_folds(5)


def test_settings_round_trip_through_their_flags():
    from training.__main__ import parser
    from training.contract import from_flags, to_flags

    s = Settings(epochs=3, hidden=(32, 16, 8), use_gpu=False, mix="mixup", warmup_steps=7, amp=False, seed=9,
                 search=Search(trials=5, algorithm="bayesian", lr=(1e-3, 1e-2), batch_size=(16,)))  # fmt: skip
    assert from_flags(parser().parse_args(["--table", "t", *to_flags(s)])) == s
    assert from_flags(parser().parse_args(["--table", "t"])) == Settings()  # defaults on both sides are one


def test_the_yaml_section_becomes_search_flags(tmp_path):
    from jobs.launch import command
    from training.__main__ import parser
    from training.contract import from_flags

    cfg = _cfg(tmp_path, {"epochs": 3, "search": {"trials": 6, "algorithm": "bayesian", "folds": 2,
                                                    "lr": [1e-4, 1e-1], "batch_size": [16, 32]}})  # fmt: skip
    args = parser().parse_args(command(cfg, "r-1")[3:])
    assert (args.search_trials, args.search_algorithm, args.search_folds) == (6, "bayesian", 2)
    assert (args.search_lr, args.search_batch_size, args.search_dropout) == ((1e-4, 1e-1), (16, 32), (0.0, 0.5))
    assert from_flags(args) == cfg.train and cfg.train.seed == cfg.seed  # the YAML's seed trains
    assert from_flags(parser().parse_args(command(_cfg(tmp_path, {}), "r-1")[3:])).search is None  # off by default


@pytest.mark.parametrize("search, message", [
    ({"trials": 1}, "train.search.trials"),
    ({"lr": [1e-2, 1e-4]}, "search.lr must be"),
    ({"dropout": [0, 1]}, "search.dropout must be"),
    ({"batch_size": []}, "search.batch_size"),
    ({"folds": 6}, "train.search.folds (6) is more than split.folds (5)"),
    ({"algorithm": "grid"}, "train.search.algorithm"),
])  # fmt: skip
def test_a_bad_search_section_names_its_key(tmp_path, search, message):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, {"search": search})
    assert message in str(err.value)


def test_the_tradeoff_grid_trains_at_the_written_hyperparameters(tmp_path):
    from jobs.analysis.tradeoff import command
    from training.tradeoff import parser

    cmd = command(_cfg(tmp_path, {"lr": 0.02, "search": {"trials": 4}}), "t", 0, ["clean"], [0, 1], "out")
    assert not [a for a in cmd if a.startswith("--search")] and parser().parse_args(cmd[3:]).lr == 0.02
