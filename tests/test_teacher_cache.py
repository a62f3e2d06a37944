"""The teacher-output cache (``teacher.cache``, issue 21) gives the students the same bits as the
online teacher: the same outputs and losses on the same batch of views, the same trained weights
whether the cache was off, empty or full, and a miss wherever the views or the teacher differ."""

import json
import warnings

import pytest
import torch

from cdkd.checkpoint import load_checkpoint
from cdkd.config import ConfigError, load_config
from cdkd.data.topdown import TEACHER_KEY
from cdkd.engine.run import epoch_seed, seed_everything
from cdkd.engine.teacher_cache import TeacherCache, cache_wanted
from cdkd.engine.train import build_training, compute_losses, fit, teacher_forward


def student(synth, teacher, cache_dir, *extra):
    return load_config("tiny_student", [f"data.root={synth}/mpii", f"teacher.checkpoint={teacher}",
                                        f"teacher.cache_dir={cache_dir}", "train.progress=none", *extra])


def first_batches(t, n=2, epoch=0):
    seed_everything(epoch_seed(t.cfg.train.seed, epoch))
    batches = []
    for batch in t.loader(epoch):
        batches.append(batch)
        if len(batches) == n:
            return batches
    return batches


def test_cached_outputs_and_losses_equal_the_online_teachers(synth, teacher_ckpt, tmp_path):
    t = build_training(student(synth, teacher_ckpt, tmp_path / "cache", "teacher.cache=disk"), tmp_path / "run")
    assert t.teacher_cache is not None
    cold = first_batches(t)
    assert all(TEACHER_KEY in b and "teacher_image" in b and "teacher_x" not in b for b in cold)
    online = [teacher_forward(t.teacher, b["teacher_image"], t.cfg, t.device) for b in cold]
    state = {k: v.clone() for k, v in t.bare_model.state_dict().items()}
    losses_cold = [t.losses(b) for b in cold]  # runs the teacher and writes its outputs
    assert t.teacher_cache.stats()["saved"] == len(cold)
    assert len(list((tmp_path / "cache").glob("teacher-*/*.pt"))) == len(cold)

    warm = first_batches(t)  # the same views again: read from the cache, no teacher crop cut
    assert all("teacher_x" in b and "teacher_image" not in b for b in warm)
    for a, b in zip(cold, warm):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    for out, b in zip(online, warm):
        for name in ("x", "y", "feature"):
            assert torch.equal(getattr(out, name), b[f"teacher_{name}"]), name
    t.bare_model.load_state_dict(state)
    losses_warm = [t.losses(b) for b in warm]
    for (total_a, terms_a, _), (total_b, terms_b, _) in zip(losses_cold, losses_warm):
        assert torch.equal(total_a, total_b)
        assert terms_a.keys() == terms_b.keys()
        for key in terms_a:
            assert torch.equal(terms_a[key], terms_b[key]), key


@pytest.mark.parametrize("workers", [0, 2])
def test_runs_without_with_empty_and_with_full_cache_are_bit_identical(synth, teacher_ckpt, tmp_path, workers):
    """The reference runs the teacher in the trainer without a cache (the code before issue 21); the
    others run it where ``auto`` puts it (the loader workers when there are any) with the cache off,
    empty and full. Same weights, distiller state and metrics."""
    from cdkd.engine.train import teacher_in_loader

    settings = {"reference": ("none", "trainer"), "none": ("none", "auto"), "cold": ("disk", "auto"),
                "warm": ("disk", "auto")}
    runs = {}
    for name, (cache, where) in settings.items():
        cfg = student(synth, teacher_ckpt, tmp_path / "cache", f"teacher.cache={cache}", f"teacher.forward_in={where}",
                      "train.epochs=2", "train.lr_steps=[1]", f"data.workers={workers}")
        runs[name] = fit(cfg, run_dir=tmp_path / name)
    in_loader = float(teacher_in_loader(cfg, torch.device("cpu")))
    shares = {name: [(row["train"]["teacher_cached"], row["train"]["teacher_in_loader"])
                     for row in map(json.loads, (run / "epochs.jsonl").read_text().splitlines())]
              for name, run in runs.items()}
    assert shares == {"reference": [(0.0, 0.0)] * 2, "none": [(0.0, in_loader)] * 2,
                      "cold": [(0.0, in_loader)] * 2, "warm": [(1.0, 0.0)] * 2}
    reference = load_checkpoint(runs["reference"] / "last.pth")
    expected = json.loads((runs["reference"] / "metrics.json").read_text())["metrics"]
    for name in ("none", "cold", "warm"):
        state = load_checkpoint(runs[name] / "last.pth")
        for part in ("state_dict", "distiller"):
            assert state[part].keys() == reference[part].keys()
            for key in reference[part]:
                assert torch.equal(state[part][key], reference[part][key]), (name, part, key)
        metrics = json.loads((runs[name] / "metrics.json").read_text())["metrics"]
        assert {k: v for k, v in metrics.items() if k != "eval_seconds"} == \
            {k: v for k, v in expected.items() if k != "eval_seconds"}


def test_other_views_or_another_teacher_miss(synth, teacher_ckpt, tmp_path):
    cfg = student(synth, teacher_ckpt, tmp_path / "cache", "teacher.cache=disk")
    t = build_training(cfg, tmp_path / "a")
    for b in first_batches(t, 1):
        t.losses(b)
    assert "teacher_x" in first_batches(t, 1)[0]  # epoch 0 again: a hit
    assert TEACHER_KEY in first_batches(t, 1, epoch=1)[0]  # other epoch, other augmentations: a miss
    flipless = build_training(student(synth, teacher_ckpt, tmp_path / "cache", "teacher.cache=disk",
                                      "data.flip=false"), tmp_path / "b")
    assert TEACHER_KEY in first_batches(flipless, 1)[0]  # other augmentation settings: other views
    other = build_training(student(synth, teacher_ckpt, tmp_path / "cache", "teacher.cache=disk",
                                   "teacher.random=true"), tmp_path / "c")
    assert other.teacher_cache.folder != t.teacher_cache.folder  # other weights: another identity
    assert TEACHER_KEY in first_batches(other, 1)[0]


def test_unreadable_file_is_a_miss_and_a_full_cache_stops_writing(synth, teacher_ckpt, tmp_path):
    t = build_training(student(synth, teacher_ckpt, tmp_path / "cache", "teacher.cache=disk"), tmp_path / "a")
    (batch,) = first_batches(t, 1)
    t.losses(batch)
    path = t.teacher_cache.path(batch[TEACHER_KEY][0])
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        (again,) = first_batches(t, 1)
    assert TEACHER_KEY in again and "teacher_image" in again
    t.losses(again)  # written again, whole
    assert "teacher_x" in first_batches(t, 1)[0]
    torch.save({"x": torch.zeros(1)}, path)  # readable but not a batch's outputs: a miss too
    assert TEACHER_KEY in first_batches(t, 1)[0]

    failing = build_training(student(synth, teacher_ckpt, tmp_path / "failing", "teacher.cache=disk"),
                             tmp_path / "f")
    (batch,) = first_batches(failing, 1)

    def disk_full(obj, f):
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    import cdkd.engine.teacher_cache as teacher_cache

    real_save = teacher_cache.torch.save
    teacher_cache.torch.save = disk_full
    try:
        with pytest.warns(UserWarning, match="failed"):
            total, _, _ = failing.losses(batch)  # training goes on with the online teacher
    finally:
        teacher_cache.torch.save = real_save
    assert torch.isfinite(total) and not list((tmp_path / "failing").glob("teacher-*/.*tmp"))

    small = build_training(student(synth, teacher_ckpt, tmp_path / "small", "teacher.cache=disk",
                                   "teacher.cache_max_gb=0.000001"), tmp_path / "b")
    (batch,) = first_batches(small, 1)
    with pytest.warns(UserWarning, match="teacher.cache_max_gb"):
        small.losses(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; training goes on with the online teacher
        total, _, _ = small.losses(batch)
    assert torch.isfinite(total) and not list((tmp_path / "small").glob("teacher-*/*.pt"))


def test_cache_and_forward_settings(tmp_path):
    assert cache_wanted("auto", False, torch.device("cpu"))
    assert not cache_wanted("auto", True, torch.device("cpu"))  # the untrained control: nobody shares it
    assert not cache_wanted("auto", False, torch.device("cuda"))
    assert cache_wanted("disk", True, torch.device("cuda")) and not cache_wanted("none", False, torch.device("cpu"))
    with pytest.raises(ConfigError, match="teacher.cache"):
        load_config("tiny_student", ["teacher.cache=ram"])
    with pytest.raises(ConfigError, match="teacher.cache_max_gb"):
        load_config("tiny_student", ["teacher.cache_max_gb=-1"])
    with pytest.raises(ConfigError, match="teacher.forward_in"):
        load_config("tiny_student", ["teacher.forward_in=gpu"])


@pytest.mark.parametrize("cores, workers, forward_in, expected", [
    (2, 2, "auto", True), (2, 0, "auto", False), (2, 2, "trainer", False), (8, 2, "auto", False),
])
def test_the_teacher_runs_in_the_loader_beside_a_one_thread_trainer(monkeypatch, cores, workers, forward_in, expected):
    """In the loader only where it has processes and the trainer runs one thread: the teacher's
    outputs then have the bits they would have in the trainer."""
    import cdkd.engine.run as run
    import cdkd.engine.train as train

    monkeypatch.setattr(train, "thread_policy", lambda cfg: run.thread_policy(cfg, cores=cores))
    cfg = load_config("tiny_student", [f"data.workers={workers}", f"teacher.forward_in={forward_in}"])
    assert train.teacher_in_loader(cfg, torch.device("cpu")) is expected
    assert not train.teacher_in_loader(cfg, torch.device("cuda"))


def test_the_teacher_identity_covers_the_code_and_the_machine(monkeypatch):
    import cdkd.engine.teacher_cache as teacher_cache
    from cdkd.models import build_pose_model

    teacher = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0).eval()
    cpu = torch.device("cpu")
    first = teacher_cache.teacher_identity(teacher, False, "none", cpu, threads=1)
    assert first == teacher_cache.teacher_identity(teacher, False, "none", cpu, threads=1)
    assert first != teacher_cache.teacher_identity(teacher, False, "none", cpu, threads=2)
    monkeypatch.setattr(teacher_cache, "code_digest", lambda: "edited")
    assert first != teacher_cache.teacher_identity(teacher, False, "none", cpu, threads=1)
    monkeypatch.undo()
    monkeypatch.setattr(teacher_cache.torch.backends.cpu, "get_cpu_capability", lambda: "another CPU")
    assert first != teacher_cache.teacher_identity(teacher, False, "none", cpu, threads=1)


def test_cache_keys(tmp_path):
    cache = TeacherCache(tmp_path, "identity", 1e9)
    assert cache.key(b"a") != cache.key(b"b") and cache.key(b"a") == TeacherCache(tmp_path, "identity", 1).key(b"a")
    assert cache.key(b"a") != TeacherCache(tmp_path, "other", 1e9).key(b"a")


def _teacher_folder(root, n, nbytes, hours_ago, stamp=True):
    """Teacher folder number ``n`` (named as the cache names them) holding ``nbytes`` of cached files,
    last used ``hours_ago`` (its stamp and its own time)."""
    import os
    import time

    folder = root / f"teacher-{n:016x}"
    folder.mkdir(parents=True)
    (folder / "batch.pt").write_bytes(b"\0" * nbytes)
    then = time.time() - hours_ago * 3600
    if stamp:
        (folder / ".last_used").touch()
        os.utime(folder / ".last_used", (then, then))
    os.utime(folder, (then, then))
    return folder


def _batch_size(tmp_path, outputs):
    """Bytes of one written batch file (the cap counts files; keys of one length give one size)."""
    probe = TeacherCache(tmp_path / "probe" / "teacher-probe", "identity", max_bytes=1e9)
    assert probe.save("z", outputs)
    return probe.path("z").stat().st_size


def test_the_cap_covers_every_teacher_and_old_ones_make_room(tmp_path):
    """Folders of teachers no run uses any more (another code digest, other weights) are deleted, least
    recently used first, when a write would pass teacher.cache_max_gb; one in use is never deleted,
    nor a folder the cache did not make."""
    outputs = {"x": torch.zeros(1000)}  # 4000 bytes of tensor: the estimate before a write
    size = _batch_size(tmp_path, outputs)
    # every folder holds one batch's bytes; the cap leaves room for 3 of them plus the estimate
    oldest = _teacher_folder(tmp_path, 1, size, hours_ago=48)
    old = _teacher_folder(tmp_path, 2, size, hours_ago=24, stamp=False)  # no stamp: the folder's own time
    busy = _teacher_folder(tmp_path, 3, size, hours_ago=0)  # another run is using it
    foreign = tmp_path / "teacher-hrnet-w32"  # not the cache's: never counted, never deleted
    foreign.mkdir()
    (foreign / "model.pth").write_bytes(b"\0" * 50000)
    (tmp_path / "decoded-mpii-train-0.bin").write_bytes(b"\0" * 50000)  # not a teacher's: not counted
    cache = TeacherCache(tmp_path / f"teacher-{99:016x}", "identity", max_bytes=3 * size + 4000)
    assert (cache.folder / ".last_used").exists()
    assert cache.save("a", outputs)  # 3 folders + the estimate fit: nothing deleted
    assert oldest.exists() and old.exists()
    with pytest.warns(UserWarning, match=f"deleted .*{oldest.name}.*teacher.cache_max_gb"):
        assert cache.save("b", outputs)  # needs room: the least recently used goes, only it
    assert not oldest.exists() and old.exists() and busy.exists()
    assert cache.evicted == [oldest.name]
    with pytest.warns(UserWarning, match=old.name):
        assert cache.save("c", outputs)
    assert not old.exists() and busy.exists()
    assert cache.load("a") is not None and cache.load("c") is not None
    with pytest.warns(UserWarning, match="teacher.cache_max_gb"):  # only the busy one left: stop writing
        assert not cache.save("d", outputs)
    assert busy.exists() and foreign.exists() and cache.full and not cache.path("d").exists()
    assert not list(tmp_path.glob(".evicting-*"))


def test_two_processes_do_not_both_make_room(tmp_path):
    """Two processes of one teacher (loader workers) with their own counts: after the first deleted a
    folder, the second counts again and deletes nothing more than it needs."""
    import pickle

    outputs = {"x": torch.zeros(1000)}
    size = _batch_size(tmp_path, outputs)
    big = size + 100  # the old folders are a little larger than a batch
    first_old = _teacher_folder(tmp_path, 1, big, hours_ago=48)
    second_old = _teacher_folder(tmp_path, 2, big, hours_ago=24)
    trainer = TeacherCache(tmp_path / f"teacher-{99:016x}", "identity", max_bytes=2 * big + size + 4000 - 1)
    one, two = (pickle.loads(pickle.dumps(trainer)) for _ in range(2))
    assert one.save("a", outputs)  # counted: both old folders + nothing yet; fits
    with pytest.warns(UserWarning, match=first_old.name):
        assert two.save("b", outputs)  # its first count sees a's file: one old folder must go
    assert not first_old.exists() and second_old.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one's count is stale (it still holds first_old): counted again
        assert one.save("c", outputs)
    assert second_old.exists() and one.evicted == [] and two.evicted == [first_old.name]


def test_a_teacher_filling_the_cap_alone_deletes_nothing(tmp_path):
    outputs = {"x": torch.zeros(1000)}
    size = _batch_size(tmp_path, outputs)
    old = _teacher_folder(tmp_path, 1, size, hours_ago=48)
    cache = TeacherCache(tmp_path / f"teacher-{99:016x}", "identity", max_bytes=size + 4000)
    (cache.folder / "own.pt").write_bytes(b"\0" * (size + 4001))  # its own files pass the cap already
    with pytest.warns(UserWarning, match="could not make room"):
        assert not cache.save("a", outputs)
    assert old.exists()  # deleting it would not have made room: kept


def test_every_process_using_a_folder_keeps_its_stamp_fresh(tmp_path, monkeypatch):
    """Loader workers are pickled copies that start every epoch anew and the trainer never reads: each
    copy stamps the folder on its first read, hit or miss, and then at least every STAMP_EVERY_S."""
    import os
    import pickle
    import time

    import cdkd.engine.teacher_cache as teacher_cache

    cache = TeacherCache(tmp_path / f"teacher-{7:016x}", "identity", max_bytes=1e9)
    assert cache.save("a", {"x": torch.zeros(10)})
    stamp = cache.folder / ".last_used"

    def age(hours):
        then = time.time() - hours * 3600
        os.utime(stamp, (then, then))

    age(1)
    worker = pickle.loads(pickle.dumps(cache))
    assert worker.load("a") is not None
    assert time.time() - stamp.stat().st_mtime < 60
    age(1)
    assert worker.load("missing") is None  # a miss is a use too, but this worker stamped a moment ago
    assert time.time() - stamp.stat().st_mtime > 3000
    monkeypatch.setattr(teacher_cache, "STAMP_EVERY_S", 0.0)
    assert worker.load("missing") is None
    assert time.time() - stamp.stat().st_mtime < 60


def test_a_folder_deleted_under_a_run_costs_one_batch(tmp_path):
    """By hand or by another run: the write that meets the hole is skipped (no crash, writing goes on)."""
    import shutil

    import cdkd.engine.teacher_cache as teacher_cache

    cache = TeacherCache(tmp_path / f"teacher-{7:016x}", "identity", max_bytes=1e9)
    assert cache.save("a", {"x": torch.zeros(10)})
    real_save = teacher_cache.torch.save

    def save_then_vanish(obj, f):
        real_save(obj, f)
        shutil.rmtree(cache.folder)

    teacher_cache.torch.save = save_then_vanish
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not cache.save("b", {"x": torch.zeros(10)})
    finally:
        teacher_cache.torch.save = real_save
    assert not cache.full
    assert cache.save("c", {"x": torch.zeros(10)}) and cache.load("c") is not None


def test_a_nearly_full_disk_stops_writing_and_says_so(tmp_path, monkeypatch):
    import collections

    import cdkd.engine.teacher_cache as teacher_cache

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    cache = TeacherCache(tmp_path / "teacher-a", "identity", max_bytes=1e12)
    with pytest.warns(UserWarning, match="only 0.1 GB is free"):
        assert not cache.save("a", {"x": torch.zeros(10)})
    assert cache.full and not cache.path("a").exists()
