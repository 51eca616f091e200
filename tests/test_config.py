from pathlib import Path

import pytest
import yaml

from bgbias.core.config import LOSSES, load_params, parse_params
from bgbias.core.errors import BgbiasError

REPO = Path(__file__).resolve().parents[1]


def base_raw() -> dict:
    return {"dataset": "toy", "loss": "triplet", "datasets": {"toy": {"format": "folder", "root": "imgs"}}}


def error_of(raw: dict) -> str:
    with pytest.raises(BgbiasError) as exc:
        parse_params(raw, Path("/base"))
    return str(exc.value)


def test_repo_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params.dataset == "synthetic"
    assert params.selected.root == REPO / "outputs" / "synthetic" / "images"
    assert params.assets_dir == REPO / "data" / "assets"


def test_relative_paths_resolve_against_params_folder(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base_raw()))
    params = load_params(tmp_path / "params.yaml")
    assert params.selected.root == tmp_path / "imgs"


def test_unknown_dataset_lists_allowed():
    raw = base_raw() | {"dataset": "imagenet"}
    msg = error_of(raw)
    assert "unknown dataset 'imagenet'" in msg and "toy" in msg


def test_unknown_loss_names_key_and_choices():
    msg = error_of(base_raw() | {"loss": "center"})
    assert msg.startswith("params: loss:") and "'center'" in msg
    for name in LOSSES:
        assert name in msg


@pytest.mark.parametrize(
    "section,key,value,expect",
    [
        ("synthetic", "image_size", "big", "synthetic.image_size"),
        ("synthetic", "bg_correlation", 1.5, "synthetic.bg_correlation: Input should be less than or equal to 1"),
        ("index", "on_small_class", "ignore", "index.on_small_class"),
        ("masks", "workers", 0, "masks.workers"),
    ],
)
def test_bad_value_names_dotted_key(section, key, value, expect):
    msg = error_of(base_raw() | {section: {key: value}})
    assert expect in msg


def test_typo_is_unknown_key():
    assert "synthetic.bg_corelation: unknown key" in error_of(base_raw() | {"synthetic": {"bg_corelation": 0.5}})


def test_overlapping_class_split_rejected():
    raw = base_raw()
    raw["datasets"]["toy"]["class_split"] = {"train": {"first": 1, "last": 5}, "val": {"first": 5, "last": 6}}
    assert "overlap" in error_of(raw)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(BgbiasError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(BgbiasError, match="not valid YAML"):
        load_params(bad)


def test_params_yaml_spells_out_the_papers_splits():
    from bgbias.core.config import PAPER_SPLITS

    params = load_params(REPO / "params.yaml")
    for name, split in PAPER_SPLITS.items():
        assert params.datasets[name].class_split == split, name


def test_a_split_bound_can_be_overridden_as_dvc_does_it(tmp_path):
    # `dvc exp run -S datasets.cars196.class_split.train.last=20` (Hydra override, no `+`).
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["datasets.cars196.class_split.train.last=20", "datasets.sop.class_split.val.first=9000"])
    params = load_params(path)
    assert params.datasets["cars196"].class_split.train.last == 20
    assert params.datasets["sop"].class_split.val.first == 9000
    assert params.datasets["cub200"].class_split == load_params(REPO / "params.yaml").datasets["cub200"].class_split
