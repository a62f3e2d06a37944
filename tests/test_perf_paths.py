"""The faster training paths of issue 21 give the same numbers as the paths they replace.

- decoded-image cache (``data.cache=decoded``): the same samples, bit for bit, as decoding each
  JPEG; rebuilt when the images change, skipped above its size limit;
- the look-up ``normalize``: the same bits as the formula;
- the teacher forward under ``inference_mode``: the same outputs as under ``no_grad``, usable in
  the distillation losses' graph;
- the thread policy (``train.threads``): threads that fit the cores, recorded in ``environment.json``.
"""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from cdkd.config import ConfigError, load_config
from cdkd.data.synthetic import synthesize
from cdkd.data.topdown import IMAGENET_MEAN, IMAGENET_STD, build_dataset, normalize
from cdkd.engine.run import setup_run, thread_policy


def tiny(root, *overrides):
    return load_config("tiny_student", [f"data.root={root}/mpii", "data.max_samples=0", *overrides])


def samples(ds, indices):
    """Training samples with the same augmentation draws (torch seeds the per-sample generator)."""
    out = []
    for i in indices:
        torch.manual_seed(1000 + i)
        out.append(ds[i])
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def assert_same_batch(a: dict, b: dict) -> None:
    """Same keys, and every value equal with its dtype and shape (torch.equal alone ignores dtype)."""
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def cache_files(root):
    return sorted(p.name for p in (root / "mpii" / ".cache").glob("decoded-*"))


def test_decoded_cache_gives_the_same_samples(synth):
    plain = build_dataset(tiny(synth, "data.cache=none"), "train")
    cached = build_dataset(tiny(synth, "data.cache=decoded"), "train")
    assert plain.decoded is None and cached.decoded is not None
    assert len(cached.decoded) == len({r.image for r in cached.records})  # every image decoded once
    assert len(cached) == len(plain) > 20
    idx = range(len(plain))
    for a, b in zip(samples(plain, idx), samples(cached, idx)):
        assert_same(a, b)
    assert "teacher_image" in a and a["teacher_image"].shape == (3, 64, 64)
    val_plain = build_dataset(tiny(synth, "data.cache=none"), "val")
    val_cached = build_dataset(tiny(synth, "data.cache=decoded"), "val")
    for i in range(len(val_plain)):
        assert_same(val_plain[i], val_cached[i])


def test_cache_is_reused_and_rebuilt_when_the_images_change(tmp_path):
    root = tmp_path / "synth"
    synthesize(root, train=6, val=2, seed=1)
    cfg = tiny(root)
    first = build_dataset(cfg, "train")
    files = cache_files(root)
    assert len(files) == 2 and all(n.startswith("decoded-mpii-train-") for n in files)
    stamp = {n: os.stat(root / "mpii" / ".cache" / n).st_mtime_ns for n in files}
    again = build_dataset(cfg, "train")  # same images: the files are read, not written
    assert cache_files(root) == files
    assert {n: os.stat(root / "mpii" / ".cache" / n).st_mtime_ns for n in files} == stamp
    assert again.decoded.index == first.decoded.index

    synthesize(root, train=6, val=2, seed=2)  # other generator settings: other images, same names
    rebuilt = build_dataset(cfg, "train")
    new_files = cache_files(root)
    assert len(new_files) == 2 and not set(new_files) & set(files)  # the stale cache is gone
    plain = build_dataset(tiny(root, "data.cache=none"), "train")
    for a, b in zip(samples(plain, range(len(plain))), samples(rebuilt, range(len(plain)))):
        assert_same(a, b)


def test_an_image_changed_after_caching_is_read_from_its_file(tmp_path):
    import cv2

    root = tmp_path / "synth"
    synthesize(root, train=4, val=2, seed=4)
    cached = build_dataset(tiny(root), "train")
    image = cached.records[0].image
    assert cached.decoded.get(image) is not None
    cv2.imwrite(image, cv2.flip(cv2.imread(image), 1))  # another picture under the same name
    assert cached.decoded.get(image) is None
    plain = build_dataset(tiny(root, "data.cache=none"), "train")
    assert_same(samples(plain, [0])[0], samples(cached, [0])[0])


def test_a_relative_data_root_reads_the_decoded_images(tmp_path, monkeypatch):
    """The study's presets give data.root relative to the repository: the cache must still be read
    (it was keyed by absolute path and looked up by the relative one, so every sample decoded its
    JPEG again)."""
    import cdkd.data.topdown as topdown

    synthesize(tmp_path / "synth", train=6, val=2, seed=5)
    monkeypatch.chdir(tmp_path)
    relative = build_dataset(tiny("synth"), "train")
    assert not os.path.isabs(relative.records[0].image) and relative.decoded is not None
    reads = []
    monkeypatch.setattr(topdown, "read_image", lambda path: reads.append(path))
    got = samples(relative, range(len(relative)))
    assert reads == [] and len(got) == len(relative) > 0
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    plain = build_dataset(tiny("synth", "data.cache=none"), "train")
    for a, b in zip(samples(plain, range(len(plain))), got):
        assert_same(a, b)


def test_cache_size_limit_and_cache_dir(tmp_path, synth):
    with pytest.warns(UserWarning, match="data.cache_max_gb"):
        ds = build_dataset(tiny(synth, "data.cache_max_gb=0.000001", f"data.cache_dir={tmp_path}/c1"), "train")
    assert ds.decoded is None and not list((tmp_path / "c1").glob("decoded-*"))
    ds[0]  # the image files are read instead
    ds = build_dataset(tiny(synth, f"data.cache_dir={tmp_path}/c2"), "train")
    assert ds.decoded is not None and len(list((tmp_path / "c2").glob("decoded-mpii-train-*"))) == 2


def test_cache_setting_is_checked():
    with pytest.raises(ConfigError, match="data.cache"):
        load_config("tiny_student", ["data.cache=ram"])
    with pytest.raises(ConfigError, match="data.cache_max_gb"):
        load_config("tiny_student", ["data.cache_max_gb=-1"])


def test_normalize_table_equals_the_formula():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((128, 128), (32, 24), (1, 1))]
    crops.append(np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8))  # every value, every channel
    for crop in crops:
        formula = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # [h, w, 3]
        expected = torch.from_numpy(np.ascontiguousarray(formula.transpose(2, 0, 1)))
        got = normalize(crop)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected)


def test_teacher_forward_equals_no_grad_and_enters_the_loss_graph():
    from cdkd.engine.train import teacher_forward
    from cdkd.models import build_pose_model

    cfg = load_config("tiny_student")
    torch.manual_seed(0)
    teacher = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0).eval().requires_grad_(False)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = teacher(image)
    out = teacher_forward(teacher, image, cfg, torch.device("cpu"))
    for a, b in zip(out, reference):
        assert torch.equal(a, b) and not a.is_inference()
    student_feature = torch.randn_like(out.feature, requires_grad=True)
    loss = 1 - torch.nn.functional.cosine_similarity(student_feature.flatten(1), out.feature.flatten(1)).mean()
    loss.backward()  # inference tensors would refuse to be saved for backward
    assert student_feature.grad is not None and torch.isfinite(student_feature.grad).all()


@pytest.mark.parametrize("cores, workers, loader, threads", [
    (2, 2, 1, 1), (2, 1, 1, 1), (2, 0, 0, 2), (8, 3, 3, 2), (16, 0, 0, 16), (1, 0, 0, 1), (1, 2, 0, 1),
])
def test_auto_threads_fit_the_cores(cores, workers, loader, threads):
    cfg = load_config("tiny_student", [f"data.workers={workers}"])
    policy = thread_policy(cfg, cores=cores)
    assert (policy["loader_workers"], policy["threads"]) == (loader, threads)
    assert policy["processes"] == 1 + loader and policy["workers"] == workers and policy["setting"] == "auto"
    assert policy["fits"] and policy["threads"] + policy["loader_workers"] <= cores


@pytest.mark.parametrize("processes", [0, 1, 2])
def test_augmentation_streams_equal_a_loader_with_that_many_workers(synth, processes):
    """Three streams, an uneven last batch kept (drop_last False): the same batches and global RNG as
    torch's loader with three workers."""
    from torch.utils.data import DataLoader

    from cdkd.data.topdown import AugmentationStreams

    ds = build_dataset(tiny(synth, "data.workers=3"), "train", teacher_size=(64, 64))
    assert len(ds) % 5 != 0
    torch.manual_seed(5)
    reference = list(DataLoader(ds, batch_size=5, shuffle=True, num_workers=3, drop_last=False))
    after = torch.get_rng_state()
    torch.manual_seed(5)
    streams = AugmentationStreams(len(ds), 5, False, 3)
    got = list(DataLoader(ds, batch_sampler=streams, num_workers=processes, generator=torch.Generator()))
    assert torch.equal(torch.get_rng_state(), after)
    assert len(streams) == len(got) == len(reference) and len(got[-1]["image"]) == len(ds) % 5
    for a, b in zip(reference, got):
        assert_same_batch(a, b)


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_all_threads_cut_batches_in_the_trainer_and_use_every_core(cores):
    policy = thread_policy(load_config("tiny_student", ["data.workers=2", "train.threads=all"]), cores=cores)
    assert (policy["loader_workers"], policy["threads"], policy["processes"]) == (0, cores, 1)
    assert policy["fits"] and policy["workers"] == 2 and policy["setting"] == "all"


def test_small_tensors_cross_processes_inside_the_pickle():
    """A collated batch leaves a worker through torch's pickler (shared memory per tensor); its small
    tensors travel inline instead, and it arrives as a plain dict with the same values and dtypes."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    from cdkd.data.topdown import INLINE_TENSOR_BYTES, InlineBatch, collate_batch

    samples = [{"image": torch.randn(3, 64, 64), "target_x": torch.arange(5) + i,
                "visible": torch.tensor([True, i > 0]), "rotation": 0.5 * i, "name": f"p{i}",
                "half": torch.ones(2, dtype=torch.bfloat16)} for i in range(4)]
    batch = collate_batch(samples)
    assert isinstance(batch, InlineBatch) and batch["image"].numel() * 4 > INLINE_TENSOR_BYTES
    _, (keys, inline, shared) = batch.__reduce__()
    assert keys == list(samples[0]) and set(inline) == {"target_x", "visible", "rotation"}
    assert set(shared) == {"image", "name", "half"}  # big, not a tensor, no NumPy dtype
    got = pickle.loads(bytes(ForkingPickler.dumps(batch)))
    assert type(got) is dict and list(got) == list(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value
    got["target_x"] += 1  # a writable tensor of its own
    assert not torch.equal(got["target_x"], batch["target_x"])
    assert collate_batch([(torch.ones(2), 1)] * 2)[0].shape == (2, 2)  # not dict samples: torch's batch


def test_all_threads_runs_repeat_bit_for_bit(synth, teacher_ckpt, tmp_path):
    """Same settings, same bits (a distillation run), with the batches cut in the trainer and every
    core computing."""
    from cdkd.checkpoint import load_checkpoint
    from cdkd.engine.train import fit

    cfg = tiny(synth, "train.threads=all", "data.workers=2", "train.epochs=2", "train.progress=none",
               f"teacher.checkpoint={teacher_ckpt}")
    before = torch.get_num_threads()
    try:
        runs = [fit(cfg, run_dir=tmp_path / name) for name in ("a", "b")]
    finally:
        torch.set_num_threads(before)
    first, second = (load_checkpoint(run / "last.pth")["state_dict"] for run in runs)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    env = json.loads((runs[0] / "environment.json").read_text())
    assert env["thread_policy"]["setting"] == "all" and env["thread_policy"]["loader_workers"] == 0


def test_all_threads_is_refused_under_ddp(synth, monkeypatch):
    import cdkd.engine.train as train
    from cdkd.engine.dist import DistInfo

    monkeypatch.setattr(train, "init_distributed", lambda device: DistInfo(rank=0, world_size=2, local_rank=0))
    monkeypatch.setattr(train, "cleanup", lambda info: None)
    with pytest.raises(ConfigError, match="train.threads"):
        train.build_training(tiny(synth, "train.threads=all", "train.mode=baseline"))


def test_evaluation_loads_with_the_policys_processes_and_gives_the_same_predictions(synth, monkeypatch):
    """Evaluation draws nothing at random: its predictions under train.threads=all (no loader
    process) equal those with two workers."""
    import cdkd.engine.evaluate as evaluate
    from cdkd.models import build_pose_model

    made = []
    loader = evaluate.DataLoader
    monkeypatch.setattr(evaluate, "DataLoader", lambda *a, **k: made.append(k["num_workers"]) or loader(*a, **k))
    base = tiny(synth, "train.mode=baseline", "data.workers=2", "train.progress=none")
    ds = build_dataset(base, "val")
    torch.manual_seed(0)
    model = build_pose_model(base.model.arch, ds.num_joints, tuple(base.model.input_size), base.model.split_ratio)
    runs = {}
    for name, threads in (("workers", "2"), ("all", "all")):
        cfg = tiny(synth, "train.mode=baseline", "data.workers=2", f"train.threads={threads}")
        runs[name] = evaluate.predict_dataset(model, ds, cfg, torch.device("cpu"), progress=False)
    assert made == [2, 0]
    assert runs["all"].keys() == runs["workers"].keys()
    for key, value in runs["workers"].items():
        assert np.array_equal(value, runs["all"][key]), key


def test_explicit_threads_keep_the_workers_and_may_oversubscribe():
    policy = thread_policy(load_config("tiny_student", ["data.workers=2", "train.threads=2"]), cores=2)
    assert (policy["loader_workers"], policy["threads"], policy["fits"]) == (2, 2, False)


@pytest.mark.parametrize("processes", [0, 1])
def test_fewer_loader_processes_give_the_batches_of_the_configured_workers(synth, processes, monkeypatch):
    """data.workers=2 on a machine that runs fewer loader processes: every batch (augmentations,
    crops, targets) and the global RNG afterwards equal those of a real 2-worker loader."""
    from torch.utils.data import DataLoader

    import cdkd.engine.train as train
    from cdkd.engine.dist import DistInfo

    cfg = tiny(synth, "data.workers=2", "train.batch_size=4")
    ds = build_dataset(cfg, "train", teacher_size=(64, 64))
    torch.manual_seed(11)
    reference = list(DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, drop_last=True,
                                worker_init_fn=train.single_thread_worker))
    after_reference = torch.get_rng_state()
    monkeypatch.setattr(train, "thread_policy", lambda c: {"loader_workers": processes})
    loader = train.make_loader(ds, cfg, 0, torch.device("cpu"), DistInfo())
    assert loader.num_workers == processes and len(loader) == len(reference) == len(ds) // 4
    torch.manual_seed(11)
    got = list(loader)
    assert torch.equal(torch.get_rng_state(), after_reference)
    for a, b in zip(reference, got):
        assert_same_batch(a, b)


def test_explicit_threads_and_bad_values():
    assert thread_policy(load_config("tiny_student", ["train.threads=3"]), cores=2)["threads"] == 3
    for bad in ("0", "many", "-1", "All"):
        with pytest.raises(ConfigError, match="train.threads"):
            load_config("tiny_student", [f"train.threads={bad}"])


def test_a_resumed_run_keeps_every_starts_thread_policy(tmp_path):
    """train.threads may change between starts of one run (it is not a result key) and changes float
    rounding from there on: environment.json keeps the earlier starts, not only the last."""
    before = torch.get_num_threads()
    run = tmp_path / "run"
    policy = {n: load_config("tiny_student", ["data.workers=0", f"train.threads={n}"]) for n in (1, 2)}
    try:
        setup_run(policy[1], run)
        (run / "last.pth").write_bytes(b"")  # the first start wrote a checkpoint before it stopped
        setup_run(policy[2], run)
        setup_run(policy[1], run)
        env = json.loads((run / "environment.json").read_text())
        assert [e["thread_policy"]["threads"] for e in env["earlier_starts"]] == [1, 2]
        assert env["thread_policy"]["threads"] == 1 and "earlier_starts" not in env["earlier_starts"][1]
        fresh = json.loads((setup_run(policy[2], tmp_path / "fresh") / "environment.json").read_text())
        assert "earlier_starts" not in fresh  # a new run: nothing earlier
    finally:
        torch.set_num_threads(before)


def test_run_records_its_thread_policy(tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = load_config("tiny_student", ["data.workers=0", "train.threads=1"])
        run = setup_run(cfg, tmp_path / "run")
        env = json.loads((run / "environment.json").read_text())
        assert env["thread_policy"]["threads"] == 1 == torch.get_num_threads() == env["torch_threads"]
        assert env["thread_policy"]["cores"] == len(os.sched_getaffinity(0))
        cfg = load_config("tiny_student", ["data.workers=0"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = json.loads((setup_run(cfg, tmp_path / "auto") / "environment.json").read_text())
        assert env["thread_policy"]["setting"] == "auto"
        assert env["thread_policy"]["threads"] == len(os.sched_getaffinity(0)) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
