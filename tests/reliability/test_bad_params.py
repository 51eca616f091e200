"""Bad params: `bgbias check` and every stage refuse them before any work, in one line
naming the dotted key (or the file), and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.reliability.conftest import assert_only_changed, assert_refused

REPO_PARAMS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())


def changed(section: str, key: str, value) -> bytes:
    raw = {**REPO_PARAMS, section: {**REPO_PARAMS[section], key: value}}
    return yaml.safe_dump(raw).encode()


CASES = {  # id: (params.yaml bytes, fragments of the error line)
    "bool_for_int": (changed("train", "epochs", True), ["train.epochs", "valid integer (got True)"]),
    "text_for_int": (changed("train", "epochs", "3"), ["train.epochs", "valid integer (got '3')"]),
    "float_for_int": (changed("train", "batch_size", 32.5), ["train.batch_size", "valid integer"]),
    "bool_for_float": (changed("train", "lr", True), ["train.lr", "got a boolean"]),
    "bool_in_a_pair": (changed("train", "crop_scale", [True, 1.0]), ["train.crop_scale.0", "got a boolean"]),
    "bool_for_loss_param": (changed("loss_params", "overrides", {"triplet": {"margin": False}}),
                            ["loss_params.overrides.triplet.margin", "got a boolean"]),
    "int_for_bool": (changed("model", "freeze_bn", 1), ["model.freeze_bn", "valid boolean"]),
    "m_over_batch": (changed("train", "m_per_class", 64),
                     ["train.m_per_class", "<= train.batch_size (32) (got 64)"]),
    "m_not_dividing_batch": (changed("train", "m_per_class", 5),
                             ["train.m_per_class", "must divide train.batch_size (32)"]),
    "out_of_range": (changed("synthetic", "bg_correlation", 1.5),
                     ["synthetic.bg_correlation", "less than or equal to 1"]),
    "bad_choice": (changed("index", "on_duplicate", "keep"), ["index.on_duplicate", "'fail' or 'drop'"]),
    "loss_param_zero": (changed("loss_params", "overrides", {"multi_similarity": {"alpha": 0.0}}),
                        ["loss_params", "multi_similarity.alpha must be > 0 (got 0.0)"]),
    "loss_lr_negative": (changed("loss_params", "overrides", {"arcface": {"lr_loss": -1.0}}),
                         ["loss_params", "arcface.lr_loss must be > 0 (got -1.0)"]),
    "unknown_key": (changed("train", "epoch", 3), ["train.epoch: unknown key"]),
    "unknown_condition": (changed("eval", "conditions", ["only_fg", "grayscale"]), ["eval.conditions.1", "'only_fg'"]),
    "condition_twice": (changed("eval", "conditions", ["only_bg", "only_bg"]), ["eval", "lists a condition twice"]),
    "curve_value_out_of_range": (changed("bias_curve", "bgaugment_p", [0.5, 2.0]),
                                 ["bias_curve.bgaugment_p.1", "less than or equal to 1"]),
    "unknown_dataset": (yaml.safe_dump({**REPO_PARAMS, "dataset": "imagenet"}).encode(),
                        ["unknown dataset 'imagenet'"]),
    "dataset_name_escapes": (yaml.safe_dump({**REPO_PARAMS, "dataset": "../../evil", "datasets": {
        **REPO_PARAMS["datasets"], "../../evil": REPO_PARAMS["datasets"]["synthetic"]}}).encode(),
        ["datasets", "dataset name '../../evil'", "names folders under outputs/"]),
    "negative_seed": (yaml.safe_dump({**REPO_PARAMS, "seed": -1}).encode(), ["seed", "greater than or equal to 0"]),
    "not_yaml": (b"dataset: [synthetic\n", ["params.yaml", "not valid YAML"]),
    "not_a_mapping": (b"- dataset\n- loss\n", ["params.yaml", "expected a mapping"]),
    "not_utf8": (b"dataset: synth\xe9tic\n", ["params.yaml:1", "not UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_params_refused_by_check(probe, case):
    text, fragments = CASES[case]
    (probe.project / "params.yaml").write_bytes(text)
    before = probe.snapshot()
    assert_refused(probe.run("check"), *fragments)
    assert_only_changed(before, probe.snapshot())


@pytest.mark.parametrize("command", [["index"], ["masks"], ["train", "--mode", "base"], ["evaluate"]])
def test_stages_refuse_bad_params_before_any_work(probe, command):
    text, fragments = CASES["m_over_batch"]
    (probe.project / "params.yaml").write_bytes(text)
    before = probe.snapshot()
    assert_refused(probe.run(*command), *fragments)
    assert_only_changed(before, probe.snapshot())


def test_missing_params_file(probe):
    before = probe.snapshot()
    assert_refused(probe.run("check"), "params file not found", "params.yaml")
    assert_only_changed(before, probe.snapshot())
