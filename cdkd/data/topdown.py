"""The top-down dataset: student crop, teacher crop and SimCC targets for each person.

Implements the data side of CDKD (Sec. III; PAPER_NOTES item 7): every sample decodes the
original image once, draws one augmentation (HRNet/SimCC: half-body, scale, rotation, flip) and
warps the image twice with the same centre, scale, rotation and flip: to the student size
(``input_size``, e.g. 64x64) and, for distillation, to the teacher size (``teacher_size``,
256x256), both with ``cv2.warpAffine`` bilinear. Targets are SimCC classes at the student size.

Pixel-centre convention: both crops use HRNet's geometry, where the box centre maps to
``(W/2, H/2)`` and crop pixel ``i`` has its centre at coordinate ``i``. A joint at student
coordinate ``x_s`` is then at exactly ``x_t = m * x_s`` in the teacher crop (``m`` = teacher /
student size). Treating pixels as unit squares instead (centre at ``i + 0.5``), the exact
correspondence would be ``x_t + 0.5 = m * (x_s + 0.5)``: so the HRNet convention places the
teacher content ``(m - 1) / 2`` teacher pixels (``(m - 1) / (2m)`` student pixels; 0.375 for
m = 4) away from an area-average downsampling of it. We keep the released geometry.

Training flips also follow the released code: the image is mirrored (``x -> width - 1 - x``)
with its box centre, and the centre then goes to crop ``x = W/2``; so a crop point ``x`` sits
at ``W - x`` in the flipped crop, one pixel right of the array mirror ``W - 1 - x``. Image and
labels stay consistent; only the test-time flip (an array mirror) needs the SimCC shift.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from cdkd.codec import encode
from cdkd.data import DataError, PersonRecord, ProblemLog
from cdkd.data.transforms import Augmentation, AugmentParams, crop_matrix, sample_augmentation
from cdkd.joints import JointsMeta, flip_permutation

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def read_image(path: str) -> np.ndarray:
    """Decode an image as RGB uint8 [H, W, 3]; raise :class:`DataError` naming the file."""
    if not Path(path).is_file():
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if jpeg_truncated(data):
        raise DataError(f"truncated JPEG file {path} (no end-of-image marker; OpenCV would fill the rest grey)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None or image.size == 0:
        raise DataError(f"cannot decode image file {path} (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def jpeg_truncated(data: np.ndarray | bytes) -> bool:
    """True for JPEG bytes without the end-of-image marker ``FF D9`` at their end (trailing zero
    padding, or a short trailer within the last 1 KiB, is allowed). Other formats: False."""
    data = bytes(data[:2]) + bytes(data[-1024:]) if len(data) > 1026 else bytes(data)
    if data[:2] != b"\xff\xd8":
        return False
    tail = data[2:].rstrip(b"\x00\r\n ")
    return not tail.endswith(b"\xff\xd9") and b"\xff\xd9" not in tail[-1024:]


def check_image_file(path: str) -> str | None:
    """Cheap check (existence and a known image signature, no decoding); None when fine."""
    if not Path(path).is_file():
        return "image file not found"
    if not cv2.haveImageReader(path):
        return "not a readable image (unknown or corrupt header)"
    return None


# normalize() as a table: entry [c, v] is (v / 255 - mean_c) / std_c, computed in float32 by the same
# operations as the direct formula, so a look-up gives the same bits (and costs a third).
_NORMALIZED = np.ascontiguousarray(((np.arange(256, dtype=np.float32)[:, None] / 255.0 - IMAGENET_MEAN)
                                    / IMAGENET_STD).T)  # [3, 256]


def normalize(crop: np.ndarray) -> torch.Tensor:
    """RGB uint8 [h, w, 3] -> ImageNet-normalised float32 [3, h, w]: ``(crop / 255 - mean) / std``."""
    out = np.empty((3, *crop.shape[:2]), dtype=np.float32)  # [3, h, w]
    for c in range(3):
        np.take(_NORMALIZED[c], crop[:, :, c], out=out[c])
    return torch.from_numpy(out)


CACHE_VERSION = 3  # bump when the cache layout or the decoding changes (3: the index keyed by absolute path)


class DecodedImages:
    """Decoded RGB uint8 images of one split, read from one memory-mapped file.

    The JPEG decode is most of a sample's cost (1.3 of 2.3 ms on the demo data, issue 21); the
    crops cut from these arrays are the same bits as from :func:`read_image`, which filled them.
    Every process maps the same file, so the loader workers share one copy in the page cache.

    Args:
        path: the ``.bin`` file (images back to back, row-major [H, W, 3]).
        index: absolute image path -> (byte offset, H, W, file size, file mtime_ns) of the decoded file.
    """

    def __init__(self, path: str | Path, index: dict[str, tuple[int, ...]]) -> None:
        self.path = str(path)
        self.index = index
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def get(self, image: str) -> np.ndarray | None:
        """The decoded image [H, W, 3] uint8 (a read-only view of the mapped file), or None when it
        is not cached or its file changed since (size or modification time: read the file then).
        ``image`` may be relative to the working directory (a relative ``data.root``)."""
        entry = self.index.get(os.path.abspath(image))
        if entry is None:
            return None
        offset, h, w, size, mtime = entry
        try:
            st = os.stat(image)
        except OSError:
            return None
        if st.st_size != size or st.st_mtime_ns != mtime:
            return None
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._data[offset: offset + h * w * 3].reshape(h, w, 3)

    def __getstate__(self) -> dict:  # a spawned worker maps the file itself
        return {"path": self.path, "index": self.index, "_data": None}


def _cache_key(images: list[str]) -> str:
    """Hash of the images' paths, sizes and modification times and of :data:`CACHE_VERSION`: a
    regenerated data set (new files) or another selection of images gets another key."""
    h = hashlib.sha1(f"cdkd decoded images v{CACHE_VERSION}".encode())
    for image in images:
        try:
            st = os.stat(image)
            h.update(f"{os.path.abspath(image)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(image)}|missing\n".encode())
    return h.hexdigest()[:20]


def decoded_images(records: Sequence[PersonRecord], cache_dir: str | Path, name: str,
                   max_bytes: float = 16e9) -> DecodedImages | None:
    """The decoded images of ``records``, cached in ``cache_dir`` as ``decoded-{name}-{key}.bin``.

    Built on first use (each image decoded once) and reused while the images are unchanged; when
    they change (the synthetic set regenerated with other settings, other records) the key changes
    and the old ``decoded-{name}-*`` files are deleted. Images that cannot be decoded are left out
    (the dataset then reads them itself and reports them as before).

    Args:
        records: the persons of a split.
        cache_dir: folder of the cache files (created).
        name: the split's name in the file names (e.g. ``mpii-train``).
        max_bytes: above this many decoded bytes nothing is cached (a warning says so).

    Returns:
        :class:`DecodedImages`, or None when the split is too large or the folder cannot be written.
    """
    images = sorted({rec.image for rec in records})
    key = _cache_key(images)
    folder = Path(cache_dir)
    stem = f"decoded-{name}-{key}"
    bin_path, index_path = folder / f"{stem}.bin", folder / f"{stem}.json"
    if index_path.is_file() and bin_path.is_file():
        stored = json.loads(index_path.read_text())
        if stored.get("key") == key and bin_path.stat().st_size == stored.get("bytes"):
            return DecodedImages(bin_path, {k: tuple(v) for k, v in stored["index"].items()})
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"decoded-{name}-*"):
            if not old.name.startswith(stem):  # another key: images changed (same key: replaced below)
                old.unlink(missing_ok=True)
        index, offset = {}, 0
        tmp = bin_path.with_name(f".{bin_path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            for image in images:
                try:
                    st = os.stat(image)
                    array = read_image(image)
                except (OSError, DataError):
                    continue  # __getitem__ reads it again and reports it
                if offset + array.nbytes > max_bytes:
                    f.close()
                    tmp.unlink()
                    warnings.warn(f"{name}: decoded images exceed {max_bytes / 1e9:g} GB (config key "
                                  "'data.cache_max_gb'); reading the image files instead", stacklevel=2)
                    return None
                f.write(np.ascontiguousarray(array).tobytes())
                index[os.path.abspath(image)] = (offset, array.shape[0], array.shape[1], st.st_size, st.st_mtime_ns)
                offset += array.nbytes
        os.replace(tmp, bin_path)
        tmp_index = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
        tmp_index.write_text(json.dumps({"key": key, "version": CACHE_VERSION, "images": len(index),
                                         "bytes": offset, "index": index}))
        os.replace(tmp_index, index_path)  # written last: a complete index means a complete cache
    except OSError as err:
        for tmp in folder.glob(f".{stem}.*.tmp"):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"cannot write the decoded-image cache in {folder} (config key 'data.cache_dir'): "
                      f"{err}; reading the image files instead", stacklevel=2)
        return None
    return DecodedImages(bin_path, index)


class TopDownDataset(Dataset):
    """Person crops for SimCC training and evaluation, with an optional teacher crop.

    Args:
        records: persons to crop (from ``coco.py`` / ``mpii.py``).
        meta: the skeleton (joint count, flip pairs, upper body).
        input_size: (H, W) of the student crop.
        split_ratio: SimCC k for the targets.
        train: draw augmentations (otherwise the record's box as is).
        teacher_size: (H, W) of the teacher crop, or None for no teacher crop.
        aug: augmentation parameters (training only).
        on_bad: ``'error'``: a missing or unreadable image raises in ``__getitem__`` naming the
            file. ``'skip'``: images are checked (existence and header) here and their persons
            left out with a warning; an image that still fails to decode later gives a blank
            sample with ``valid = 0`` and zero target weights, with a warning, and is counted.
        problems: problems met by the loader (kept in :attr:`skipped`).
        dataset_name, ann_file, coco, gt_mat, filtered: what evaluation needs (set by
            :func:`build_dataset`): the COCO annotation file and object, the MPII ``gt_valid.mat``.
        decoded: the split's images already decoded (:func:`decoded_images`), or None to decode
            each sample's image file (the crops are the same).

    A sample is a dict: ``image`` [3, h, w] float32, ``target_x`` / ``target_y`` [J] int64,
    ``target_weight`` [J] float32, ``teacher_image`` [3, H, W] (with ``teacher_size``),
    ``joints`` [J, 3] (crop x, y at ``input_size``, visibility), ``center`` [2], ``scale`` [2]
    (the box the crop was cut from; the centre is mirrored for flipped samples as in HRNet),
    ``rotation``, ``score``, ``area``, ``image_id``, ``index`` (record index), ``flipped`` and
    ``valid`` (0 only for a skipped unreadable image).
    """

    def __init__(
        self,
        records: list[PersonRecord],
        meta: JointsMeta,
        input_size: Sequence[int],
        split_ratio: float,
        train: bool,
        teacher_size: Sequence[int] | None = None,
        aug: AugmentParams | None = None,
        on_bad: str = "error",
        problems: ProblemLog | None = None,
        dataset_name: str | None = None,
        ann_file: str | None = None,
        coco=None,
        gt_mat: str | None = None,
        filtered: dict | None = None,
        decoded: DecodedImages | None = None,
    ) -> None:
        self.meta = meta
        self.decoded = decoded
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.teacher_size = None if teacher_size is None else (int(teacher_size[0]), int(teacher_size[1]))
        self.split_ratio = float(split_ratio)
        self.train = bool(train)
        self.aug = aug or AugmentParams()
        self.problems = problems if problems is not None else ProblemLog(on_bad)
        self.problems.on_bad = on_bad
        self.on_bad = on_bad
        self.dataset_name = dataset_name or meta.name
        self.ann_file = ann_file
        self.coco = coco
        self.gt_mat = gt_mat
        self.filtered = dict(filtered or {})
        self.records = self._check_images(records) if on_bad == "skip" else list(records)
        self.teacher_cache = None  # see use_teacher_cache
        self.teacher_forward = None  # see use_teacher_forward
        self.images_key: str | None = None

    # -- attributes used by training and evaluation -------------------------------------------
    @property
    def num_joints(self) -> int:
        return self.meta.num_joints

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        return self.meta.flip_pairs

    @property
    def skipped(self) -> list[dict]:
        """Every skipped item (annotation or image) as ``{'where', 'reason'}``, in this process."""
        return self.problems.skipped

    @property
    def head_boxes(self) -> np.ndarray | None:
        """[N, 4] 0-based head boxes (x1, y1, x2, y2) when every record has one, else None."""
        from cdkd.data.mpii import head_boxes

        boxes = head_boxes(self.records) if self.records else None  # [N, 2, 2]
        return None if boxes is None else boxes.reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict:
        # DataLoader workers only need the records; the COCO index can be hundreds of MB.
        state = dict(self.__dict__)
        state["coco"] = None
        return state

    # -- loading --------------------------------------------------------------------------------
    def _check_images(self, records: list[PersonRecord]) -> list[PersonRecord]:
        verdict: dict[str, str | None] = {}
        kept = []
        for rec in records:
            if rec.image not in verdict:
                verdict[rec.image] = check_image_file(rec.image)
                if verdict[rec.image] is not None:
                    self.problems.report(f"image {rec.image}", str(verdict[rec.image]))
                    self.problems.skipped[-1]["ann_id"] = int(rec.ann_id)
            elif verdict[rec.image] is not None:  # one entry per person left out, one warning per image
                self.problems.skipped.append({"where": f"image {rec.image}", "reason": str(verdict[rec.image]),
                                              "ann_id": int(rec.ann_id)})
            if verdict[rec.image] is None:
                kept.append(rec)
        return kept

    def _augmentation(self, rec: PersonRecord, seed: int | None = None) -> Augmentation:
        if not self.train:
            return Augmentation(center=rec.center.copy(), scale=rec.scale.copy(), rotation=0.0, flip=False)
        # One seed per sample from torch's generator: DataLoader seeds it per worker, so the
        # draw is reproducible under torch.manual_seed and differs between workers. A batch of
        # AugmentationStreams brings the seed that draw would have given.
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        rng = np.random.default_rng(seed)
        aspect = self.input_size[1] / self.input_size[0]
        return sample_augmentation(
            rec.center, rec.scale, rec.joints, rec.visible, self.aug, self.meta.upper_body_ids, aspect, rng
        )

    def __getitem__(self, index: int) -> dict:
        sample, image, aug = self._item(index)
        if image is not None and self.teacher_size is not None:
            sample["teacher_image"] = self._teacher_crop(image, aug)
        return sample

    def _item(self, index: int, seed: int | None = None) -> tuple[dict, np.ndarray | None, Augmentation | None]:
        """The sample without its teacher crop, with the image and augmentation it was cut with
        (a blank sample, :meth:`_blank_sample`, comes with its teacher crop and no image);
        ``seed``: the augmentation's seed (default: drawn from torch's generator)."""
        rec = self.records[index]
        try:
            image = self.decoded.get(rec.image) if self.decoded is not None else None
            if image is None:
                image = read_image(rec.image)
        except DataError as err:
            if self.on_bad == "error":
                raise DataError(f"{err} (record #{index}, image id {rec.image_id}, annotation id {rec.ann_id})") from None
            warnings.warn(f"skipping unreadable image: {err}", stacklevel=2)
            self.problems.skipped.append({"where": f"image {rec.image}", "reason": str(err)})
            return self._blank_sample(index, rec), None, None
        aug = self._augmentation(rec, seed)
        width = image.shape[1]
        h, w = self.input_size
        matrix = crop_matrix(aug.center, aug.scale, aug.rotation, aug.flip, width, self.input_size)
        crop = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR)

        joints = np.zeros((self.num_joints, 3), dtype=np.float32)
        joints[:, :2] = rec.joints[:, :2] @ matrix[:, :2].T + matrix[:, 2]  # [J, 2] crop px
        joints[:, 2] = rec.visible
        if aug.flip:
            joints = joints[flip_permutation(self.flip_pairs, self.num_joints)]  # mirrored left is right
        target_x, target_y, weight = encode(joints[:, :2], joints[:, 2], self.input_size, self.split_ratio)

        center = aug.center.astype(np.float32)
        if aug.flip:
            center = np.array([width - 1 - center[0], center[1]], dtype=np.float32)
        sample = {
            "image": normalize(crop),  # [3, h, w]
            "target_x": torch.from_numpy(target_x),  # [J]
            "target_y": torch.from_numpy(target_y),  # [J]
            "target_weight": torch.from_numpy(weight),  # [J]
            "joints": torch.from_numpy(joints),  # [J, 3]
            "center": torch.from_numpy(center),
            "scale": torch.from_numpy(aug.scale.astype(np.float32)),
            "rotation": float(aug.rotation),
            "score": float(rec.score),
            "area": float(rec.area),
            "image_id": int(rec.image_id),
            "index": int(index),
            "flipped": int(aug.flip),
            "valid": 1,
            "split_ratio": float(self.split_ratio),  # k, so that a sample's targets can be read alone
        }
        return sample, image, aug

    def _teacher_crop(self, image: np.ndarray, aug: Augmentation) -> torch.Tensor:
        """The teacher crop [3, H, W]: the student crop's warp at the teacher size."""
        th, tw = self.teacher_size
        t_matrix = crop_matrix(aug.center, aug.scale, aug.rotation, aug.flip, image.shape[1], self.teacher_size)
        return normalize(cv2.warpAffine(image, t_matrix, (tw, th), flags=cv2.INTER_LINEAR))

    # -- teacher outputs from a cache (cdkd.engine.teacher_cache) or the loader workers ---------
    def use_teacher_cache(self, cache) -> None:
        """Read the teacher's outputs of a loader batch from ``cache`` (a
        :class:`cdkd.engine.teacher_cache.TeacherCache`, or None to stop) instead of cutting the
        teacher crops, where the cache holds that batch of views (:meth:`__getitems__`)."""
        self.teacher_cache = cache
        self.images_key = _cache_key([rec.image for rec in self.records]) if cache is not None else None

    def __getitems__(self, indices: Sequence[int] | Sequence[tuple[int, int]]) -> list[dict]:
        """A loader batch (torch's ``DataLoader`` calls this with the batch's indices, or with
        ``(index, seed)`` pairs from :class:`AugmentationStreams`).

        Without a teacher cache or teacher forward: the samples of :meth:`__getitem__`. With a cache
        (:meth:`use_teacher_cache`), the batch's views (images, record indices, augmentations,
        teacher size) name a cache file; when it exists each sample carries its teacher outputs as
        ``teacher_x``, ``teacher_y`` and ``teacher_feature`` and no teacher crop is cut. Otherwise,
        in a loader worker with a teacher forward (:meth:`use_teacher_forward`), the worker runs the
        teacher on the batch's crops, gives the same three fields and writes them to the cache;
        else each sample gets its teacher crop and, with a cache, the file's key as ``teacher_key``
        (the trainer runs the teacher and writes there). The samples collate with torch's default.
        A batch with a blank sample is neither cached nor run here. The random draws are those of
        ``__getitem__``.
        """
        pairs = [(i, None) if isinstance(i, (int, np.integer)) else (int(i[0]), int(i[1])) for i in indices]
        items = [self._item(i, seed) for i, seed in pairs]
        samples = [sample for sample, _, _ in items]
        if self.teacher_size is None:
            return samples
        whole = all(image is not None for _, image, _ in items)
        cache = self.teacher_cache
        key = cache.key(self._views(items)) if cache is not None and whole else None
        if key is not None:
            outputs = cache.load(key)
            if _whole_batch(outputs, len(samples)):
                return _with_teacher_outputs(samples, outputs, TEACHER_FROM_CACHE)
        for sample, image, aug in items:
            if image is not None:
                sample["teacher_image"] = self._teacher_crop(image, aug)
        forward = self.teacher_forward
        if forward is not None and whole and get_worker_info() is not None:
            out = forward(torch.stack([sample.pop("teacher_image") for sample in samples]))
            outputs = {f: getattr(out, f).contiguous() for f in TEACHER_FIELDS}
            if key is not None:
                cache.save(key, outputs)
            return _with_teacher_outputs(samples, outputs, TEACHER_FROM_LOADER)
        if key is not None:
            for sample in samples:
                sample[TEACHER_KEY] = key
        return samples

    def use_teacher_forward(self, forward) -> None:
        """Run ``forward`` (teacher crops [B, 3, H, W] -> the teacher's outputs, e.g.
        :func:`cdkd.engine.train.teacher_forward` bound to a frozen CPU teacher; None to stop) in the
        loader workers on each batch's teacher crops (:meth:`__getitems__`): on a CPU the teacher then
        runs beside the student's step, on a core of its own."""
        self.teacher_forward = forward

    def _views(self, items) -> bytes:
        """What the batch's teacher crops are cut from, as bytes (part of the cache key)."""
        parts = [f"{self.images_key}|{len(self.records)}|teacher {self.teacher_size}|".encode()]
        for sample, image, aug in items:
            parts.append(np.array([sample["index"], image.shape[0], image.shape[1], int(aug.flip)], np.int64).tobytes())
            parts.append(np.array([*aug.center, *aug.scale, aug.rotation], np.float64).tobytes())
        return b"".join(parts)

    def _blank_sample(self, index: int, rec: PersonRecord) -> dict:
        """A sample with a zero image and zero weights for an image that could not be read."""
        h, w = self.input_size
        j = self.num_joints
        sample = {
            "image": torch.zeros(3, h, w),
            "target_x": torch.zeros(j, dtype=torch.int64),
            "target_y": torch.zeros(j, dtype=torch.int64),
            "target_weight": torch.zeros(j),
            "joints": torch.zeros(j, 3),
            "center": torch.from_numpy(rec.center.astype(np.float32)),
            "scale": torch.from_numpy(rec.scale.astype(np.float32)),
            "rotation": 0.0,
            "score": float(rec.score),
            "area": float(rec.area),
            "image_id": int(rec.image_id),
            "index": int(index),
            "flipped": 0,
            "valid": 0,
            "split_ratio": float(self.split_ratio),
        }
        if self.teacher_size is not None:
            sample["teacher_image"] = torch.zeros(3, *self.teacher_size)
        return sample


TEACHER_FIELDS = ("x", "y", "feature")  # a sample's cached teacher outputs are "teacher_x", ...
TEACHER_KEY = "teacher_key"  # the cache file a batch's teacher outputs go to (on each of its samples)
TEACHER_FROM_CACHE, TEACHER_FROM_LOADER = 1, 2  # a sample's "teacher_source"


def _whole_batch(outputs, size: int) -> bool:
    """Whether a cache file's content is the teacher outputs of a batch of ``size`` samples."""
    return isinstance(outputs, dict) and all(
        isinstance(outputs.get(f), torch.Tensor) and len(outputs[f]) == size for f in TEACHER_FIELDS)


def _with_teacher_outputs(samples: list[dict], outputs: dict[str, torch.Tensor], source: int) -> list[dict]:
    """Each sample gets its row of the batch's teacher outputs as ``teacher_x`` etc., and where they
    came from as ``teacher_source`` (:data:`TEACHER_FROM_CACHE` or :data:`TEACHER_FROM_LOADER`)."""
    for i, sample in enumerate(samples):
        sample.update({f"teacher_{f}": outputs[f][i] for f in TEACHER_FIELDS})
        sample["teacher_source"] = source
    return samples


INLINE_TENSOR_BYTES = 1 << 16  # tensors up to 64 KiB cross from a loader worker inside the pickled batch
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                 torch.uint8, torch.bool)


def collate_batch(samples: list[dict]) -> "InlineBatch":
    """torch's default collation, a batch of dict samples as an :class:`InlineBatch` (the loaders'
    ``collate_fn``)."""
    batch = default_collate(samples)
    return InlineBatch(batch) if isinstance(batch, dict) else batch


class InlineBatch(dict):
    """A collated batch whose small tensors travel from a loader worker inside the pickle.

    torch hands every tensor from a worker to the trainer as shared memory: one file descriptor per
    tensor, passed over a socket after an authentication handshake. A distillation batch has 19
    tensors, most of a few hundred bytes (targets, weights, centres, scales, teacher sources), and
    receiving them cost the trainer milliseconds per batch (issue 21, a profile of the distill step).
    Tensors of at most :data:`INLINE_TENSOR_BYTES` go as NumPy arrays in the pickle; the crops
    and the teacher outputs keep the shared memory. On arrival the batch is a plain ``dict`` with
    the same keys, values, dtypes and shapes (small tensors come back contiguous).
    """

    def __reduce__(self):
        inline = {key: value.numpy() for key, value in self.items() if _travels_inline(value)}
        shared = {key: value for key, value in self.items() if key not in inline}
        return _unpack_batch, (list(self), inline, shared)


def _travels_inline(value) -> bool:
    """A small, plain CPU tensor that ``.numpy()`` takes as it is (a failure in the worker's queue
    thread would lose the batch, so anything else keeps torch's own transport)."""
    return (isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.layout == torch.strided
            and not (value.requires_grad or value.is_neg() or value.is_conj())
            and value.dtype in _NUMPY_DTYPES and value.numel() * value.element_size() <= INLINE_TENSOR_BYTES)


def _unpack_batch(keys: list, inline: dict[str, np.ndarray], shared: dict) -> dict:
    """The batch an :class:`InlineBatch` pickled (an unpickled array may be read-only: then copied)."""
    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    return {key: tensor(inline[key]) if key in inline else shared[key] for key in keys}


class AugmentationStreams:
    """The shuffled batches of an epoch, each index with the seed of its augmentation, as a
    ``DataLoader`` with ``streams`` workers would draw them, for a loader with fewer (or no) worker
    processes (``DataLoader(batch_sampler=...)``; :func:`cdkd.engine.train.make_loader`).

    torch's loader draws, from the global generator, first its workers' base seed, then the
    shuffling seed of its ``RandomSampler``; worker ``w`` seeds its generator with ``base + w`` and
    gets batches ``w, w + streams, ...``, where each sample draws its augmentation seed in turn
    (:meth:`TopDownDataset._augmentation`). This sampler makes the same draws in the same order, so
    the batches are the same bits whatever number of processes cuts them. (A blank sample of an
    unreadable image draws no seed in a real worker, so after one the two differ.) Give the loader
    a generator of its own, so that its own draw leaves the global one alone.

    Args:
        size: the data set's length.
        batch_size: samples per batch.
        drop_last: drop the last incomplete batch.
        streams: the number of loader workers whose draws are reproduced (``data.workers``, >= 1).
    """

    def __init__(self, size: int, batch_size: int, drop_last: bool, streams: int) -> None:
        self.size, self.batch_size = int(size), int(batch_size)
        self.drop_last, self.streams = bool(drop_last), int(streams)

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self):
        base = int(torch.empty((), dtype=torch.int64).random_().item())  # the loader's worker base seed
        shuffle = torch.Generator()
        shuffle.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))  # RandomSampler's
        order = torch.randperm(self.size, generator=shuffle).tolist()
        generators = []
        for w in range(self.streams):
            generators.append(torch.Generator())
            generators[-1].manual_seed(base + w)
        for b in range(len(self)):
            indices = order[b * self.batch_size: (b + 1) * self.batch_size]
            g = generators[b % self.streams]
            yield [(i, int(torch.randint(0, 2**62, (), generator=g).item())) for i in indices]


def _resolve(path: str, root: Path) -> Path:
    """``path`` as given when it exists, else relative to the dataset root."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else root / p


def build_dataset(
    cfg,
    split: str,
    input_size: Sequence[int] | None = None,
    split_ratio: float | None = None,
    teacher_size: Sequence[int] | None | str = "auto",
    train: bool | None = None,
) -> TopDownDataset:
    """The dataset a config describes (``cfg.data``), following the official folder layout.

    COCO: ``ROOT/annotations/person_keypoints_{set}.json`` and ``ROOT/images/{set}/``; the val
    split uses detections from ``data.det_file`` when ``data.use_gt_bbox`` is false (training
    always uses ground-truth boxes, as HRNet). MPII: ``ROOT/annot/{set}.json``, images under
    ``ROOT/images/``, PCKh ground truth ``ROOT/annot/gt_{set}.mat`` when present.

    Args:
        cfg: a :class:`cdkd.config.Config`.
        split: ``'train'`` (``data.train_set``) or ``'val'`` (``data.val_set``).
        input_size: (H, W) of the student crop; default ``model.input_size``.
        split_ratio: SimCC k; default ``model.split_ratio``.
        teacher_size: (H, W) of the teacher crop, or None; default ('auto'): ``teacher.input_size``
            for the training split of a distill run, else None.
        train: augment; defaults to ``split == 'train'``.

    Returns:
        :class:`TopDownDataset` with ``records`` (the first ``data.max_samples`` persons when
        that is positive), ``skipped`` and ``filtered`` reports, and for evaluation
        ``ann_file``/``coco`` (COCO) or ``gt_mat``/``head_boxes`` (MPII).
    """
    from cdkd.data.coco import load_coco_api, load_coco_det, load_coco_gt
    from cdkd.data.mpii import load_mpii_json
    from cdkd.joints import COCO_META, MPII_META

    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val'; got {split!r}")
    data = cfg.data
    train = split == "train" if train is None else bool(train)
    input_size = tuple(cfg.model.input_size) if input_size is None else tuple(input_size)
    split_ratio = cfg.model.split_ratio if split_ratio is None else split_ratio
    if teacher_size == "auto":
        teacher_size = tuple(cfg.teacher.input_size) if split == "train" and cfg.train.mode == "distill" else None
    set_name = data.train_set if split == "train" else data.val_set
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(
            f"dataset root {root} (config key 'data.root') does not exist; "
            "see data/README.md, or run `python -m cdkd data synth --out data/synth`"
        )
    aspect = float(input_size[1]) / float(input_size[0])
    extras: dict = {}
    if data.dataset == "coco":
        meta = COCO_META
        ann_file = root / "annotations" / f"person_keypoints_{set_name}.json"
        image_dir = root / "images" / set_name
        if split == "val" and not data.use_gt_bbox:
            if not data.det_file:
                raise DataError("config key 'data.det_file' is empty but 'data.use_gt_bbox' is false")
            coco = load_coco_api(ann_file)
            loaded = load_coco_det(
                _resolve(data.det_file, root), coco, image_dir, aspect, data.det_score_thr, data.bbox_enlarge, data.on_bad
            )
        else:
            loaded = load_coco_gt(ann_file, image_dir, aspect, data.bbox_enlarge, data.on_bad)
        records, problems = loaded.records, loaded.problems
        extras = {"ann_file": str(ann_file), "coco": loaded.coco, "filtered": loaded.filtered}
    elif data.dataset == "mpii":
        meta = MPII_META
        loaded = load_mpii_json(root / "annot" / f"{set_name}.json", root / "images", data.on_bad)
        records, problems = loaded.records, loaded.problems
        gt_mat = root / "annot" / f"gt_{set_name}.mat"
        extras = {"gt_mat": str(gt_mat) if gt_mat.is_file() else None}
    else:
        raise DataError(f"config key 'data.dataset' is {data.dataset!r}; choose 'coco' or 'mpii'")
    if data.max_samples > 0:
        records = records[: data.max_samples]
    decoded = None
    if data.cache == "decoded" and records:
        cache_dir = Path(data.cache_dir) if data.cache_dir else root / ".cache"
        decoded = decoded_images(records, cache_dir, f"{data.dataset}-{set_name}", data.cache_max_gb * 1e9)
    aug = AugmentParams(
        scale_factor=data.scale_factor,
        rotation_factor=data.rotation_factor,
        rot_prob=data.rot_prob,
        flip=data.flip,
        half_body_prob=data.half_body_prob,
        num_joints_half_body=data.num_joints_half_body,
    )
    return TopDownDataset(
        records, meta, input_size, split_ratio, train, teacher_size=teacher_size, aug=aug,
        on_bad=data.on_bad, problems=problems, dataset_name=meta.name, decoded=decoded, **extras,
    )
