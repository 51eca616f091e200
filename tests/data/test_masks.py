import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgbias.masks.compute import SOURCE_HASHES, MaskJob, U2netpMasker, compute_masks, folder_jobs
from tests.conftest import object_image


def test_masks_equal_rembg_u2netp(tmp_path, assets_dir, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(assets_dir))  # rembg finds the local model; no download
    from rembg import new_session

    theirs = new_session("u2netp")
    ours = U2netpMasker(assets_dir / "u2netp.onnx", threads=1)
    for seed, size in ((0, 48), (1, 64), (2, 33)):
        image = Image.open(object_image(tmp_path / f"{seed}.png", size=size, seed=seed)).convert("RGB")
        expected = np.asarray(theirs.predict(image)[0])
        got = np.asarray(ours.predict(image))
        assert got.shape == (size, size)
        assert np.array_equal(got, expected)


def test_folder_masks_mirror_relative_paths(tmp_path, assets_dir):
    object_image(tmp_path / "in" / "a" / "x.jpg", size=40)
    object_image(tmp_path / "in" / "b" / "c" / "y.png", size=30, seed=1)
    jobs = folder_jobs(tmp_path / "in", tmp_path / "out")
    report = compute_masks(jobs, tmp_path / "out", assets_dir / "u2netp.onnx", workers=1, progress=False)
    assert (report.written, report.existing, report.failed) == (2, 0, [])
    assert Image.open(tmp_path / "out" / "a" / "x.png").size == (40, 40)
    mask = Image.open(tmp_path / "out" / "b" / "c" / "y.png")
    assert mask.mode == "L" and mask.size == (30, 30)
    # u2netp finds the disc: its centre is foreground, a corner is background
    arr = np.asarray(mask)
    assert arr[15, 15] > 128 and arr[1, 1] < 128
    again = compute_masks(jobs, tmp_path / "out", assets_dir / "u2netp.onnx", workers=1, progress=False)
    assert (again.written, again.existing) == (0, 2)


def test_image_replaced_under_the_same_name_gets_a_new_mask(tmp_path, assets_dir):
    for i in range(3):
        object_image(tmp_path / "in" / f"{i}.png", size=40, seed=i)
    jobs = folder_jobs(tmp_path / "in", tmp_path / "out")
    model = assets_dir / "u2netp.onnx"
    compute_masks(jobs, tmp_path / "out", model, workers=1, progress=False)
    before = {i: (tmp_path / "out" / f"{i}.png").stat().st_mtime_ns for i in range(3)}

    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "in" / "1.png")
    report = compute_masks(jobs, tmp_path / "out", model, workers=1, progress=False)

    assert (report.written, report.existing) == (1, 2)
    after = {i: (tmp_path / "out" / f"{i}.png").stat().st_mtime_ns for i in range(3)}
    assert [i for i in range(3) if after[i] != before[i]] == [1]
    expected = U2netpMasker(model, threads=1).predict(Image.open(tmp_path / "in" / "1.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "1.png")), np.asarray(expected))


def test_failed_image_is_reported_not_masked(tmp_path, assets_dir):
    object_image(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    report = compute_masks(folder_jobs(tmp_path / "in", tmp_path / "out"), tmp_path / "out",
                           assets_dir / "u2netp.onnx", workers=1, progress=False)
    assert report.written == 1
    assert [f["image"].rsplit("/", 1)[-1] for f in report.failed] == ["broken.jpg"]
    assert not (tmp_path / "out" / "broken.png").exists()


def test_two_workers_give_the_same_masks(tmp_path, assets_dir):
    for i in range(6):
        object_image(tmp_path / "in" / f"{i}.png", size=36, seed=i)
    model = assets_dir / "u2netp.onnx"
    for name, workers in (("one", 1), ("two", 2)):
        compute_masks(folder_jobs(tmp_path / "in", tmp_path / name), tmp_path / name, model, workers=workers,
                      progress=False)
    for i in range(6):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / f"{i}.png")),
                              np.asarray(Image.open(tmp_path / "two" / f"{i}.png")))


def test_resume_after_sigkill(tmp_path, assets_dir):
    n = 60
    for i in range(n):
        object_image(tmp_path / "in" / f"{i:02d}.png", size=40, seed=i)
    cmd = [sys.executable, "-m", "bgbias", "masks", str(tmp_path / "in"), str(tmp_path / "out"),
           "--assets-dir", str(assets_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.png"))) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((tmp_path / "out").glob("*.png")))
    assert 5 <= done_before < n, "the kill should land mid-run"
    # A mask counts as made once its journal line is written (after the PNG): a PNG the
    # kill caught before its line is not trusted and is made again.
    journal = (tmp_path / "out" / "source_hashes.journal").read_text().split("\n")[:-1]
    recorded = len(journal)
    assert recorded <= done_before
    # Whatever survived the kill is a complete, decodable mask (no half-written .png).
    for path in (tmp_path / "out").glob("*.png"):
        assert Image.open(path).size == (40, 40)

    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    written = int(result.stdout.split()[0])
    assert written == n - recorded
    assert not list((tmp_path / "out").glob("*.partial"))

    reference = tmp_path / "ref"
    compute_masks(folder_jobs(tmp_path / "in", reference), reference, assets_dir / "u2netp.onnx", workers=1,
                  progress=False)
    for i in range(n):
        name = f"{i:02d}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), np.asarray(Image.open(reference / name)))


def test_masks_cli_without_args_needs_both_dirs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bgbias", "masks", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: usage: bgbias masks IMAGES_DIR OUT_DIR "
                                     "(or no arguments to run the pipeline stage)")


def test_job_paths_drop_extension(tmp_path):
    (tmp_path / "in" / "d").mkdir(parents=True)
    (tmp_path / "in" / "d" / "p.JPEG").write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("x")
    assert folder_jobs(tmp_path / "in", tmp_path / "o") == [MaskJob(tmp_path / "in" / "d" / "p.JPEG",
                                                                      tmp_path / "o" / "d" / "p.png")]


def test_record_journal_of_a_killed_run_is_merged(tmp_path, assets_dir):
    """A run killed after writing masks left their entries in the journal (the last line torn
    by the kill): the next run keeps exactly the masks the journal vouches for."""
    for i in range(3):
        object_image(tmp_path / "in" / f"{i}.png", size=32, seed=i)
    jobs = folder_jobs(tmp_path / "in", tmp_path / "out")
    model = assets_dir / "u2netp.onnx"
    compute_masks(jobs, tmp_path / "out", model, workers=1, progress=False)
    record = tmp_path / "out" / SOURCE_HASHES
    saved = json.loads(record.read_text())
    made_from = saved["sources"]
    record.write_text(json.dumps({**saved, "sources": {"0.png": made_from["0.png"]}}))  # as saved before the run
    journal = json.dumps(["1.png", made_from["1.png"]]) + "\n" + json.dumps(["2.png", made_from["2.png"]])[:20]
    (tmp_path / "out" / "source_hashes.journal").write_text(journal)

    report = compute_masks(jobs, tmp_path / "out", model, workers=1, progress=False)

    assert (report.existing, report.written) == (2, 1)  # 2.png's entry was torn: recomputed
    assert json.loads(record.read_text()) == saved
    assert not (tmp_path / "out" / "source_hashes.journal").exists()


def _doc_string_appended(model: Path, out: Path) -> Path:
    """The same network in another file: a second ModelProto.doc_string field (number 6,
    length-delimited) appended; protobuf keeps the last occurrence, so it still loads."""
    note = b"a retrained u2netp"
    out.write_bytes(model.read_bytes() + bytes([6 << 3 | 2, len(note)]) + note)
    return out


def test_another_model_file_redoes_every_mask(tmp_path, assets_dir):
    import json

    from bgbias.core.assets import sha256_of
    from bgbias.masks.compute import LEGACY_MODEL_SHA256, SOURCE_HASHES

    object_image(tmp_path / "in" / "0.png", size=40)
    jobs = folder_jobs(tmp_path / "in", tmp_path / "out")
    model = assets_dir / "u2netp.onnx"
    assert compute_masks(jobs, tmp_path / "out", model, progress=False).written == 1
    record = json.loads((tmp_path / "out" / SOURCE_HASHES).read_text())
    assert record["model_sha256"] == sha256_of(model) == LEGACY_MODEL_SHA256 and len(record["sources"]) == 1

    other = _doc_string_appended(model, tmp_path / "u2netp-other.onnx")
    report = compute_masks(jobs, tmp_path / "out", other, progress=False)
    assert (report.written, report.existing, report.failed) == (1, 0, [])
    assert json.loads((tmp_path / "out" / SOURCE_HASHES).read_text())["model_sha256"] == sha256_of(other)
    assert compute_masks(jobs, tmp_path / "out", other, progress=False).existing == 1  # up to date now

    # A record of the older flat format was made by the pinned model: kept with it, redone with another.
    (tmp_path / "out" / SOURCE_HASHES).write_text(json.dumps(record["sources"]))
    assert compute_masks(jobs, tmp_path / "out", model, progress=False).existing == 1
    (tmp_path / "out" / SOURCE_HASHES).write_text(json.dumps(record["sources"]))
    assert compute_masks(jobs, tmp_path / "out", other, progress=False).written == 1


def test_masks_made_with_other_numerics_are_redone(tmp_path, assets_dir):
    # fp16 / nvJPEG masks on a GPU differ from onnxruntime's (README): a folder made that
    # way is not reused by an exact run, nor the other way round; exact runs keep the record
    # as it always was (no numerics field), so existing folders stay valid.
    import json

    from bgbias.core.assets import sha256_of
    from bgbias.masks.compute import EXACT, SOURCE_HASHES, SourceRecord, drop_stale_masks, mask_numerics

    assert mask_numerics(("onnxruntime", "cpu"), "fp16", "nvjpeg") == EXACT
    assert mask_numerics(("torch", "cpu"), "fp16", "nvjpeg") == EXACT  # the CPU always runs fp32 on Pillow's pixels
    assert mask_numerics(("torch", "cuda"), "fp32", "pillow") == EXACT
    assert mask_numerics(("torch", "cuda"), "fp16", "nvjpeg") == "cuda-fp16-nvjpeg"
    assert mask_numerics(("torch", "cuda"), "fp32", "nvjpeg") == "cuda-fp32-nvjpeg"

    object_image(tmp_path / "in" / "0.png", size=40)
    jobs = folder_jobs(tmp_path / "in", tmp_path / "out")
    model = assets_dir / "u2netp.onnx"
    assert compute_masks(jobs, tmp_path / "out", model, progress=False).written == 1
    record_path = tmp_path / "out" / SOURCE_HASHES
    assert set(json.loads(record_path.read_text())) == {"model_sha256", "sources"}
    sha1s = {"0.png": json.loads(record_path.read_text())["sources"]["0.png"]}

    drop_stale_masks(jobs, tmp_path / "out", sha1s, sha256_of(model), "cuda-fp16-nvjpeg")
    assert not jobs[0].mask.exists()  # exact masks are not what an fp16 run would make
    jobs[0].mask.write_bytes(b"stands for the fp16 run's mask")
    record = SourceRecord(tmp_path / "out")  # as the fp16 run records the mask it wrote
    record.made_from["0.png"] = sha1s["0.png"]
    record.save()
    assert json.loads(record_path.read_text())["numerics"] == "cuda-fp16-nvjpeg"
    drop_stale_masks(jobs, tmp_path / "out", sha1s, sha256_of(model), "cuda-fp16-nvjpeg")
    assert jobs[0].mask.exists()  # same numerics: kept
    report = compute_masks(jobs, tmp_path / "out", model, progress=False)  # exact again: redone
    assert (report.written, report.existing) == (1, 0)
    assert set(json.loads(record_path.read_text())) == {"model_sha256", "sources"}

