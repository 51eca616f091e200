"""Typed, validated params: `params.yaml` is read once into `Params`.

Every section forbids unknown keys, so a typo fails at start with the key's name
instead of silently using a default. Relative paths are resolved against the
directory of the params file, so stages behave the same from any working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from bgbias.core.errors import BgbiasError

LOSSES = ("contrastive", "triplet", "multi_similarity", "arcface", "normalized_softmax")
DATASET_FORMATS = ("cars196", "cub200", "sop", "folder", "csv")


def _not_a_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
    return value


# Strict types: pydantic's lax mode would read `epochs: true` as 1 and `"3"` as 3. Integers
# must be integers; floats take any number (and numeric text: PyYAML reads `1e-4` as a
# string), never a boolean; booleans must be true or false.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]
Bool = Annotated[bool, Strict()]
Probability = Annotated[Float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[Int, Field(gt=0)]
PositiveFloat = Annotated[Float, Field(gt=0.0)]
BACKBONES = ("efficientnet_lite0", "bninception", "resnet50")
MODES = ("base", "bgaugment")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassRange(Section):
    """Inclusive range of 1-based class ids (for folder/csv: ranks of the sorted class names)."""

    first: PositiveInt
    last: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> ClassRange:
        if self.first > self.last:
            raise ValueError(f"first ({self.first}) must be <= last ({self.last})")
        return self

    def __contains__(self, class_id: int) -> bool:
        return self.first <= class_id <= self.last


class ClassSplit(Section):
    """Class-disjoint train/val/test split; `test` is unused for SOP (Ebay_test.txt is the test set)."""

    train: ClassRange
    val: ClassRange
    test: ClassRange | None = None

    @model_validator(mode="after")
    def _disjoint(self) -> ClassSplit:
        ranges = [(n, r) for n, r in (("train", self.train), ("val", self.val), ("test", self.test)) if r]
        for i, (a, ra) in enumerate(ranges):
            for b, rb in ranges[i + 1 :]:
                if ra.first <= rb.last and rb.first <= ra.last:
                    raise ValueError(f"class ranges '{a}' and '{b}' overlap")
        return self

    def split_of(self, class_id: int) -> str | None:
        for name in ("train", "val", "test"):
            rng = getattr(self, name)
            if rng is not None and class_id in rng:
                return name
        return None


def _split(train: tuple[int, int], val: tuple[int, int], test: tuple[int, int] | None) -> ClassSplit:
    def rng(r):
        return None if r is None else ClassRange(first=r[0], last=r[1])

    return ClassSplit(train=rng(train), val=rng(val), test=rng(test))


# The paper's class splits (DESIGN.md section 2); SOP's test set is Ebay_test.txt.
PAPER_SPLITS: dict[str, ClassSplit] = {
    "cars196": _split((1, 74), (75, 98), (99, 196)),
    "cub200": _split((1, 75), (76, 100), (101, 200)),
    "sop": _split((1, 8489), (8490, 11318), None),
}


class DatasetConfig(Section):
    format: Literal["cars196", "cub200", "sop", "folder", "csv"]
    root: Path
    class_split: ClassSplit | None = None
    # csv only: the index file inside root, columns path,label[,split].
    index_file: str = "labels.csv"
    # Directory of ground-truth masks (same relative paths, .png), if the dataset has them.
    gt_masks: Path | None = None

    def effective_split(self) -> ClassSplit | None:
        return self.class_split or PAPER_SPLITS.get(self.format)


class IndexConfig(Section):
    min_images_per_class: Annotated[Int, Field(ge=2)] = 2
    on_small_class: Literal["drop", "fail"] = "drop"
    on_corrupt_image: Literal["skip", "fail"] = "skip"
    # A path listed twice (or with two labels): fail, or drop the repeats (a path with two
    # labels entirely) with a warning, recorded in outputs/index/<dataset>.json.
    on_duplicate: Literal["fail", "drop"] = "fail"
    workers: PositiveInt = 2


class SyntheticClasses(Section):
    train: PositiveInt = 40
    val: PositiveInt = 10
    test: PositiveInt = 20


class SyntheticConfig(Section):
    classes: SyntheticClasses = SyntheticClasses()
    images_per_class: Annotated[Int, Field(ge=2)] = 30
    image_size: Annotated[Int, Field(ge=32, le=1024)] = 96
    bg_correlation: Probability = 0.9
    # Object area as a share of the image, drawn uniformly per image.
    object_area: tuple[Probability, Probability] = (0.12, 0.26)
    workers: PositiveInt = 2

    @model_validator(mode="after")
    def _area_ordered(self) -> SyntheticConfig:
        lo, hi = self.object_area
        if not 0 < lo <= hi:
            raise ValueError(f"object_area must satisfy 0 < low <= high (got {lo}, {hi})")
        return self


class BackgroundsConfig(Section):
    # 'bundled' (photos shipped with scikit-image plus procedural textures) or a
    # directory holding `train_subdir` and `test_subdir` folders of photos.
    source: str = "bundled"
    train_subdir: str = "val"
    test_subdir: str = "test"
    procedural_per_pool: Annotated[Int, Field(ge=0)] = 40
    max_side: Annotated[Int, Field(ge=32)] = 512


class MasksConfig(Section):
    model: Literal["u2netp"] = "u2netp"
    # Processes; each uses cpu_count // workers ONNX threads. 1 is fastest on 2 cores
    # because decode/encode threads already overlap the model (benchmarks/masks.py).
    workers: PositiveInt = 1
    # onnxruntime (CPU, one image at a time) or the torch port (batched); auto: torch where
    # CUDA is available, else onnxruntime. Same masks with the default precision and decoder
    # (data/masks_torch.py).
    backend: Literal["auto", "onnxruntime", "torch"] = "auto"
    batch_size: PositiveInt = 16  # images per torch batch
    # The torch engine on CUDA (the CPU runs fp32 on Pillow's pixels). fp32 (TF32 off) on
    # Pillow-decoded pixels gives onnxruntime's masks; tf32/fp16 and nvJPEG decoding are up to
    # ~3x faster but move some masks a lot (bf16 is not offered: it breaks masks, measured in
    # benchmarks/masks_precision.py and the README).
    precision: Literal["fp32", "tf32", "fp16"] = "fp32"
    decoder: Literal["pillow", "nvjpeg"] = "pillow"


class PrepareConfig(Section):
    # Store train/val images and masks once, shorter side train.resize, uint8, memory-mapped
    # (data/prepared.py); training then reads them without decoding and crops on the device.
    enabled: bool = False


class MaskQualityConfig(Section):
    threshold: Annotated[Int, Field(ge=1, le=255)] = 128


class ModelConfig(Section):
    backbone: Literal["efficientnet_lite0", "bninception", "resnet50"] = "efficientnet_lite0"
    embedding_dim: PositiveInt = 128
    # The paper keeps every BatchNorm in eval mode (no running-stat updates) while training.
    freeze_bn: Bool = True
    # ImageNet weights file: required for bninception, optional for resnet50 (random
    # init with a warning otherwise); efficientnet_lite0 uses the offline asset.
    weights: Path | None = None


class TrainConfig(Section):
    """Defaults are the paper's (DESIGN.md section 2); params.yaml shrinks them for CPU."""

    epochs: PositiveInt = 100  # upper bound; early stopping usually ends sooner
    iterations_per_epoch: PositiveInt = 100
    patience: PositiveInt = 15  # epochs without a better validation MAP@R
    batch_size: Annotated[Int, Field(ge=2)] = 32
    m_per_class: PositiveInt = 4  # classification losses always use 1
    lr: PositiveFloat = 1e-6  # embedder (backbone + embedding layer)
    lr_embedding: PositiveFloat | None = None  # embedding layer; None = lr
    weight_decay: Annotated[Float, Field(ge=0.0)] = 1e-4
    momentum: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.9
    resize: Annotated[Int, Field(ge=16)] = 256  # eval: shorter side, then centre crop
    crop: Annotated[Int, Field(ge=16)] = 227
    crop_scale: tuple[Probability, Probability] = (0.16, 1.0)
    crop_ratio: tuple[PositiveFloat, PositiveFloat] = (0.75, 4 / 3)
    bgaugment_p: Probability = 1.0  # share of training images whose background is replaced
    # Epochs at the start with the backbone frozen (only the embedding layer trains), so the
    # fresh layer's random gradients do not damage the pretrained features (0: the paper).
    warmup_epochs: Annotated[Int, Field(ge=0)] = 0
    eval_batch_size: PositiveInt = 128
    workers: Annotated[Int, Field(ge=0)] | None = None  # DataLoader workers; None: 0 on CPU, 8 on CUDA
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must be <= resize ({self.resize})")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high (got {self.crop_scale})")
        if self.crop_ratio[0] > self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy low <= high (got {self.crop_ratio})")
        return self

    @field_validator("m_per_class")
    @classmethod
    def _fits_batch(cls, m: int, info: ValidationInfo) -> int:
        # Checked for every loss (classification losses use m=1), so that `-S loss=...` or a
        # tuning study cannot turn valid params invalid. batch_size is validated first.
        batch = info.data.get("batch_size")
        if batch is not None and m > batch:
            raise ValueError(f"must be <= train.batch_size ({batch}) (got {m})")
        if batch is not None and batch % m:
            raise ValueError(f"must divide train.batch_size ({batch}): batches hold batch_size / m classes "
                             f"of m images (got {m})")
        return m


class LossParamsConfig(Section):
    # paper: the paper's values for cars196/cub200/sop formats, documented defaults otherwise;
    # tuned: the best values of `bgbias tune` (params/tuned/<dataset>/<loss>.yaml).
    source: Literal["paper", "tuned"] = "paper"
    # Per-loss overrides on top, e.g. {multi_similarity: {alpha: 2.0}}.
    overrides: dict[str, dict[str, Float]] = {}

    @model_validator(mode="after")
    def _known_keys(self) -> LossParamsConfig:
        from bgbias.core.loss_params import HYPERPARAMETERS, POSITIVE

        for loss, values in self.overrides.items():
            if loss not in HYPERPARAMETERS:
                raise ValueError(f"unknown loss '{loss}' in overrides; allowed: {', '.join(HYPERPARAMETERS)}")
            unknown = sorted(set(values) - set(HYPERPARAMETERS[loss]))
            if unknown:
                raise ValueError(f"unknown {loss} hyperparameter '{unknown[0]}'; allowed: "
                                 f"{', '.join(HYPERPARAMETERS[loss])}")
            not_positive = sorted(k for k, v in values.items() if (loss, k) in POSITIVE and not v > 0)
            if not_positive:
                raise ValueError(f"{loss}.{not_positive[0]} must be > 0 (got {values[not_positive[0]]})")
        return self


SWAP_CONDITIONS = ("only_fg", "only_bg", "mixed_same", "mixed_rand")
SwapCondition = Literal["only_fg", "only_bg", "mixed_same", "mixed_rand"]


class EvalConfig(Section):
    # Seeded draws of test-pool backgrounds for the replaced-background test set (the
    # paper: one unseeded draw); metrics.json reports their mean and std.
    replaced_draws: PositiveInt = 3
    batch_size: PositiveInt = 128
    # Background-swap conditions besides clean and replaced (after Xiao et al., ICLR 2021;
    # engine/conditions.py); the drawn ones (mixed_*) use replaced_draws draws too.
    conditions: tuple[SwapCondition, ...] = SWAP_CONDITIONS
    worst_of_k: Annotated[Int, Field(ge=0)] = 5  # test-pool backgrounds per query for worst-case MAP@R; 0: off

    @model_validator(mode="after")
    def _distinct_conditions(self) -> EvalConfig:
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"eval.conditions lists a condition twice: {list(self.conditions)}")
        return self


class BiasCurveConfig(Section):
    """`pipelines/bias_curve/dvc.yaml`: one point per value (README: Bias curve)."""

    bg_correlation: tuple[Probability, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)  # synthetic data re-rendered
    bgaugment_p: tuple[Probability, ...] = (0.0, 0.25, 0.5, 1.0)  # BGAugment on the default data
    # Masks of the re-rendered synthetic sets: the renderer's exact ones (no rembg pass per
    # point: ~5 min each on 2 cores) or u2netp's as in the default study.
    masks: Literal["ground_truth", "rembg"] = "ground_truth"


class AttributionConfig(Section):
    images: PositiveInt = 40  # seeded sample of test images (all when fewer)
    batch_size: PositiveInt = 8  # images per step; each expands to noisy_copies inputs
    noisy_copies: PositiveInt = 25  # SmoothGrad copies (the paper: 25)
    figure_rows: PositiveInt = 6


class TuneConfig(Section):
    n_trials: PositiveInt = 20  # total over all workers and reruns (a rerun continues the study)
    timeout: PositiveFloat | None = None  # seconds per `bgbias tune` call
    epochs: PositiveInt = 3  # trial budget: epochs of train.iterations_per_epoch
    pruner: Literal["median", "hyperband", "none"] = "median"
    search_lr: Bool = False  # also search train.lr
    workers: PositiveInt = 1  # local processes sharing the study
    # None: an Optuna journal file under outputs/tune/ (safe for local processes); or an
    # RDB URL (e.g. postgresql://user:pass@host/db) for workers on several machines.
    storage: str | None = None
    # RDB storage only: each running trial beats every heartbeat_interval seconds; a trial
    # silent for grace_period seconds (its worker died) is marked FAIL by the next trial start.
    heartbeat_interval: PositiveInt = 60
    grace_period: PositiveInt = 180


class TrackingConfig(Section):
    # None: the project's own store, sqlite:///<project>/mlruns/mlflow.db; or an MLflow
    # tracking server, http(s)://host:port (artifacts through its proxy), or a database URL.
    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _is_uri(cls, uri: str | None) -> str | None:
        if uri is not None and "://" not in uri:
            raise ValueError(f"expected http(s)://host:port or a database URL (got {uri!r})")
        return uri


class ClusterConfig(Section):
    """What each Ray task of `bgbias grid run --ray` asks the cluster for."""

    cpus_per_cell: PositiveFloat = 8.0
    gpus_per_cell: Annotated[Float, Field(ge=0.0)] = 1.0
    cpus_per_prepare: PositiveFloat = 8.0  # the masks of a dataset (u2netp on CPU)
    max_retries: Annotated[Int, Field(ge=0)] = 2  # a cell whose worker died is run again (resuming)


class PaperConfig(Section):
    """The paper's grid (pipelines/paper/): datasets x losses x modes, one cell each."""

    datasets: list[str] = ["cars196", "cub200", "sop"]
    losses: list[Literal["contrastive", "triplet", "multi_similarity", "arcface", "normalized_softmax"]] = \
        list(LOSSES)
    modes: list[Literal["base", "bgaugment"]] = list(MODES)
    # auto: bninception when model.weights is given (the paper's network), else efficientnet_lite0.
    backbone: Literal["auto", "efficientnet_lite0", "bninception", "resnet50"] = "auto"
    # Shared folder for the grid's outputs/ and reports/ (Ray workers on several machines);
    # null: the project. Relative to the project.
    storage: Path | None = None
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("datasets", "losses", "modes")
    @classmethod
    def _unique(cls, values: list) -> list:
        if not values:
            raise ValueError("must name at least one")
        if len(set(values)) != len(values):
            raise ValueError(f"names a value twice (got {values})")
        return values


class Params(Section):
    dataset: str
    loss: Literal["contrastive", "triplet", "multi_similarity", "arcface", "normalized_softmax"]
    seed: Annotated[Int, Field(ge=0)] = 0  # training, background draws, attribution sample, tuning
    data_seed: Annotated[Int, Field(ge=0)] = 0  # the synthetic set and the procedural backgrounds
    seeds: Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1)] = [0, 1, 2]  # pipelines/seeds
    assets_dir: Path = Path("data/assets")
    datasets: dict[str, DatasetConfig]
    index: IndexConfig = IndexConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    backgrounds: BackgroundsConfig = BackgroundsConfig()
    masks: MasksConfig = MasksConfig()
    mask_quality: MaskQualityConfig = MaskQualityConfig()
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loss_params: LossParamsConfig = LossParamsConfig()
    eval: EvalConfig = EvalConfig()
    attribution: AttributionConfig = AttributionConfig()
    bias_curve: BiasCurveConfig = BiasCurveConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    paper: PaperConfig | None = None  # the paper grid's params file only

    @field_validator("datasets")
    @classmethod
    def _plain_names(cls, datasets: dict[str, DatasetConfig]) -> dict[str, DatasetConfig]:
        # A dataset's name is a folder and file name under outputs/ (index, masks, train, tune):
        # a '/' or '..' in it would write outside them.
        for name in datasets:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"dataset name {name!r}: use letters, digits, '_', '.' and '-', starting with "
                                 "a letter or digit (it names folders under outputs/)")
        return datasets

    @model_validator(mode="after")
    def _known_dataset(self) -> Params:
        for name in [self.dataset] + (self.paper.datasets if self.paper else []):
            if name not in self.datasets:
                allowed = ", ".join(sorted(self.datasets))
                raise ValueError(f"unknown dataset '{name}'; allowed (keys of 'datasets'): {allowed}")
        return self

    @model_validator(mode="after")
    def _distinct_seeds(self) -> Params:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds lists a seed twice: {self.seeds}")
        return self

    @property
    def selected(self) -> DatasetConfig:
        return self.datasets[self.dataset]


def _describe(error: ValidationError) -> str:
    """One line naming the first bad key, what was wrong and, for choices, the allowed values."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = f"got {first['input']!r}; {msg[0].lower()}{msg[1:]}"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{key}: {msg}{more}"


def _resolve_paths(params: Params, base: Path) -> Params:
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    datasets = {
        name: cfg.model_copy(update={"root": absolute(cfg.root), "gt_masks": absolute(cfg.gt_masks)})
        for name, cfg in params.datasets.items()
    }
    model = params.model.model_copy(update={"weights": absolute(params.model.weights)})
    update = {"datasets": datasets, "assets_dir": absolute(params.assets_dir), "model": model}
    if params.paper is not None:
        update["paper"] = params.paper.model_copy(update={"storage": absolute(params.paper.storage)})
    return params.model_copy(update=update)


def parse_params(raw: dict, base: Path, source: str = "params") -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise BgbiasError(f"{source}: {_describe(exc)}") from None
    return _resolve_paths(params, base)


def load_params(path: Path | str = "params.yaml", base: Path | None = None) -> Params:
    """`base`: the folder relative paths are resolved against (default: the file's)."""
    path = Path(path)
    if not path.is_file():
        raise BgbiasError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise BgbiasError(f"{path}:{line}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise BgbiasError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise BgbiasError(f"{path}: expected a mapping of keys at the top level")
    return parse_params(raw, base or path.resolve().parent, source=str(path))
