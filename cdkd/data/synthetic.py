"""A procedural people dataset in the official COCO and MPII formats (the project's default data).

The CDKD paper trains and evaluates on MPII and COCO (Sec. IV-A), which cannot be shipped. This
module draws a small stand-in that exercises exactly the same loaders, crops and metrics:
articulated 2-D figures from one body model (limb proportions of an adult, about 7.5 heads
tall) in five pose families (standing, walking, arms raised, bending, sitting), facing the
camera or turned away, with a head carrying face marks (eyes, nose, mouth, ears) so that left
and right follow from the view, far-side limbs shaded darker and drawn behind the body,
clothing colours and textures, 1-4 people per image with overlaps, cluttered backgrounds and
random occluders; people are about 30 to 300 pixels tall.

Every image is drawn from its own seed (``[seed, split, index]``), so output bytes depend only
on the arguments (JPEG via ``cv2.imencode`` at a fixed quality; the ``.mat`` header is fixed).

Layout written under ``out_dir`` (see ``data/README.md``)::

    images/{train,val}/000000000001.jpg         the images (one copy)
    coco/images -> ../images                     relative symlink, so COCO ROOT is out_dir/coco
    coco/annotations/person_keypoints_{train,val}.json
    coco/person_detection_results/det_val.json   jittered GT boxes with scores (SimpleBaselines format)
    mpii/images -> ../images                     relative symlink, so MPII ROOT is out_dir/mpii
    mpii/annot/{train,valid}.json                HRNet-style MPII annotations (1-based pixels)
    mpii/annot/gt_valid.mat                      PCKh ground truth (official structure)
    synth_summary.json                           counts and arguments, written last

Annotation rules: a joint outside the image is unlabelled (COCO v=0, MPII joints_vis 0 at -1);
a joint hidden by another person, an occluder or the person's own body is COCO v=1; a face mark
on the far side of the head is v=1, or v=0 when it faces away entirely. MPII labels every joint
inside the image (joints_vis 1), as MPII does for occluded joints. COCO boxes and areas come from
the visible pixels of each person (segmentation as RLE of that mask).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cdkd.data import DataError
from cdkd.joints import COCO_META, MPII_META

JPEG_QUALITY = 90
SPLITS = {"train": 0, "val": 1}
IMAGE_SIZES = ((320, 320), (384, 288), (480, 360), (512, 384), (640, 480))  # (W, H)
PEOPLE_PER_IMAGE = ((1, 0.35), (2, 0.3), (3, 0.2), (4, 0.15))
POSES = (("stand", 0.25), ("walk", 0.25), ("raise", 0.2), ("bend", 0.15), ("sit", 0.15))
SHIFT = 4  # cv2 fractional bits: drawing is exact to 1/16 pixel
ONE = 1 << SHIFT

# The body model's joints (a superset of COCO's 17 and MPII's 16).
BODY_JOINTS = (
    "head_top", "upper_neck", "thorax", "pelvis", "nose", "l_eye", "r_eye", "l_ear", "r_ear",
    "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
    "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
J = {name: i for i, name in enumerate(BODY_JOINTS)}
COCO_FROM_BODY = tuple(J[n.replace("left_", "l_").replace("right_", "r_")] for n in COCO_META.joint_names)
MPII_FROM_BODY = tuple(J[n] for n in MPII_META.joint_names)

# Drawn parts (values of the per-person part map; 0 is "not this person").
PARTS = (
    "torso", "hips", "neck", "head", "hair", "eyes", "nose", "mouth", "l_ear", "r_ear",
    "l_upper_arm", "l_forearm", "l_hand", "r_upper_arm", "r_forearm", "r_hand",
    "l_thigh", "l_shank", "l_foot", "r_thigh", "r_shank", "r_foot",
)
P = {name: i + 1 for i, name in enumerate(PARTS)}

# A joint counts as seen when the pixel under it shows one of these parts of its own person.
ADJACENT = {
    "head_top": ("head", "hair"), "upper_neck": ("neck", "head", "hair"), "thorax": ("torso", "neck"),
    "pelvis": ("hips", "torso", "l_thigh", "r_thigh"), "nose": ("nose", "head", "mouth"),
    "l_eye": ("eyes", "head", "hair"), "r_eye": ("eyes", "head", "hair"),
    "l_ear": ("l_ear", "head", "hair"), "r_ear": ("r_ear", "head", "hair"),
}
for _s in ("l", "r"):
    ADJACENT.update({
        f"{_s}_shoulder": ("torso", "neck", f"{_s}_upper_arm"),
        f"{_s}_elbow": (f"{_s}_upper_arm", f"{_s}_forearm"),
        f"{_s}_wrist": (f"{_s}_forearm", f"{_s}_hand"),
        f"{_s}_hip": ("hips", "torso", f"{_s}_thigh"),
        f"{_s}_knee": (f"{_s}_thigh", f"{_s}_shank"),
        f"{_s}_ankle": (f"{_s}_shank", f"{_s}_foot"),
    })
ADJACENT_IDS = tuple(frozenset(P[p] for p in ADJACENT[name]) for name in BODY_JOINTS)

# Face marks: (horizontal angle on the head in degrees, + towards the person's left; elevation / ry).
FACE_MARKS = {"nose": (0.0, -0.18), "l_eye": (30.0, 0.12), "r_eye": (-30.0, 0.12),
              "l_ear": (90.0, 0.02), "r_ear": (-90.0, 0.02)}

SKIN_TONES = ((185, 205, 240), (150, 180, 225), (120, 160, 210), (90, 130, 180), (60, 95, 140), (45, 65, 100))
HAIR_COLOURS = ((20, 20, 25), (30, 45, 70), (40, 70, 110), (90, 140, 190), (150, 150, 155), (25, 30, 60))


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector at ``angle`` degrees from straight down, positive towards image +x."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])


@dataclass
class Figure:
    """One drawn person: joints (image px) and drawing primitives in back-to-front order."""

    joints: np.ndarray  # [len(BODY_JOINTS), 2]
    face_depth: dict  # face mark name -> depth in [-1, 1] (1 = facing the camera)
    prims: list  # (kind, part, *geometry)
    colours: dict  # part -> BGR
    textures: dict  # part -> (kind, period, angle)
    height: float
    head_center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    head_len: float = 0.0

    def translate(self, offset: np.ndarray) -> None:
        self.joints = self.joints + offset
        self.head_center = self.head_center + offset
        moved = []
        for prim in self.prims:
            kind, part, *geo = prim
            if kind == "line":
                moved.append((kind, part, geo[0] + offset, geo[1] + offset, geo[2]))
            elif kind == "circle":
                moved.append((kind, part, geo[0] + offset, geo[1]))
            elif kind == "ellipse":
                moved.append((kind, part, geo[0] + offset, *geo[1:]))
            else:  # poly
                moved.append((kind, part, geo[0] + offset))
        self.prims = moved

    def extent(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 covering every primitive."""
        lo, hi = [], []
        for kind, _, *geo in self.prims:
            if kind == "line":
                r = geo[2] / 2 + 1
                pts = np.stack([geo[0], geo[1]])
                lo.append(pts.min(0) - r)
                hi.append(pts.max(0) + r)
            elif kind == "circle":
                lo.append(geo[0] - geo[1] - 1)
                hi.append(geo[0] + geo[1] + 1)
            elif kind == "ellipse":
                r = max(geo[1]) + 1
                lo.append(geo[0] - r)
                hi.append(geo[0] + r)
            else:
                lo.append(geo[0].min(0) - 1)
                hi.append(geo[0].max(0) + 1)
        lo_a, hi_a = np.min(lo, axis=0), np.max(hi, axis=0)
        return float(lo_a[0]), float(lo_a[1]), float(hi_a[0]), float(hi_a[1])


def _random_colour(rng: np.random.Generator, sat=(0.25, 1.0), val=(0.25, 0.95)) -> tuple[int, int, int]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _jitter(colour, rng: np.random.Generator, amount: float = 12.0) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _sample_palette(rng: np.random.Generator, far: str) -> tuple[dict, dict]:
    """Colours per part (far-side limbs darker) and textures of the clothes."""
    skin = _jitter(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng, 10)
    hair = _jitter(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], rng, 8)
    shirt = _random_colour(rng)
    pants = _random_colour(rng, sat=(0.1, 0.7), val=(0.15, 0.7))
    shoes = _jitter((30, 30, 35), rng, 15)
    long_sleeves = rng.random() < 0.5
    shorts = rng.random() < 0.3
    colours = {
        "torso": shirt, "hips": pants, "neck": skin, "head": skin, "hair": hair,
        "eyes": (30, 25, 25), "nose": _shade(skin, 0.78), "mouth": (60, 50, 140),
        "l_ear": _shade(skin, 0.88), "r_ear": _shade(skin, 0.88),
    }
    for s in ("l", "r"):
        colours.update({
            f"{s}_upper_arm": shirt, f"{s}_forearm": shirt if long_sleeves else skin, f"{s}_hand": skin,
            f"{s}_thigh": pants, f"{s}_shank": skin if shorts else pants, f"{s}_foot": shoes,
        })
    for name in list(colours):
        if name.startswith(f"{far}_") and not name.endswith("_ear"):
            colours[name] = _shade(colours[name], 0.72)
    textures = {}
    for group, parts in (("shirt", ("torso", "l_upper_arm", "r_upper_arm")), ("pants", ("hips", "l_thigh", "r_thigh"))):
        kind = ("plain", "stripes", "checks", "noise")[rng.integers(4)]
        spec = (kind, float(rng.uniform(3, 9)), float(rng.uniform(0, 180)))
        for part in parts:
            textures[part] = spec
        if group == "shirt" and long_sleeves:
            textures["l_forearm"] = textures["r_forearm"] = spec
    return colours, textures


def _limb_angles(rng, pose: str, side_view: bool, outward: dict, fwd_sign: float, tilt: float) -> tuple[dict, dict]:
    """Arm and leg angles of a pose family (degrees from straight down, + towards image +x).

    Returns:
        arm: side -> (upper arm angle, forearm angle, upper arm length factor, forearm factor);
        leg: side -> [thigh angle, shank angle, thigh length factor, shank factor]. Length
        factors below 1 foreshorten a limb pointing towards or away from the camera.
    """
    arm = {}
    leg = {}
    for side in ("l", "r"):
        o = outward[side]
        up_a = o * rng.uniform(4, 25) + tilt * 0.3
        fa_a = up_a + o * rng.uniform(-50, 20)
        if pose == "stand" and rng.random() < 0.25:  # hands on hips
            up_a = o * rng.uniform(30, 50)
            fa_a = up_a - o * rng.uniform(70, 110)
        elif pose == "raise" and rng.random() < 0.8:
            up_a = o * rng.uniform(95, 175)
            fa_a = up_a + o * rng.uniform(-40, 40)
        elif pose == "bend":
            up_a = rng.uniform(-15, 15) + fwd_sign * rng.uniform(0, 20)
            fa_a = up_a + rng.uniform(-15, 15)
        elif pose == "sit" and rng.random() < 0.6:  # forearms on the lap
            up_a = o * rng.uniform(0, 20)
            fa_a = up_a + fwd_sign * rng.uniform(40, 90)
        if rng.random() < 0.08:  # now and then an arbitrary gesture
            up_a = rng.uniform(-180, 180)
            fa_a = up_a + rng.uniform(-90, 90)
        arm[side] = (up_a, fa_a, rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0))
        th_a = o * rng.uniform(0, 10)
        leg[side] = [th_a, th_a + rng.uniform(-5, 5), 1.0, 1.0]
    if pose == "walk":
        front = rng.choice(["l", "r"])
        back = "r" if front == "l" else "l"
        if side_view:
            th = fwd_sign * rng.uniform(12, 30)
            leg[front] = [th, th - fwd_sign * rng.uniform(0, 10), 1.0, 1.0]
            th = -fwd_sign * rng.uniform(8, 25)
            leg[back] = [th, th - fwd_sign * rng.uniform(10, 40), 1.0, 1.0]
            swing = rng.uniform(5, 30)
            for side, sign in ((front, -1.0), (back, 1.0)):  # arms swing against the legs
                up_a = sign * fwd_sign * swing
                arm[side] = (up_a, up_a + fwd_sign * rng.uniform(0, 40), rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0))
        else:
            leg[front][2] = rng.uniform(0.75, 0.92)  # the stepping thigh comes towards the camera
    elif pose == "bend":
        for side in ("l", "r"):
            th = -fwd_sign * rng.uniform(0, 15) + outward[side] * rng.uniform(0, 4)
            leg[side] = [th, th + fwd_sign * rng.uniform(0, 10), 1.0, 1.0]
    elif pose == "sit":
        for side in ("l", "r"):
            if side_view:
                leg[side] = [fwd_sign * rng.uniform(70, 100), rng.uniform(-15, 15), rng.uniform(0.85, 1.0), 1.0]
            else:
                th = outward[side] * rng.uniform(0, 25)
                leg[side] = [th, outward[side] * rng.uniform(0, 15), rng.uniform(0.3, 0.5), 1.0]
    return arm, leg


def _sample_figure(rng: np.random.Generator, height: float) -> Figure:
    """A random person of ``height`` pixels with the pelvis at the origin."""
    H = height
    pose = POSES[rng.choice(len(POSES), p=[p for _, p in POSES])][0]
    facing = 1.0 if rng.random() < 0.85 else -1.0  # +1: towards the camera
    side_view = pose == "bend" or (pose in ("walk", "sit") and rng.random() < 0.6)
    yaw = rng.uniform(40, 75) * rng.choice([-1, 1]) if side_view else rng.uniform(-40, 40)
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    fwd = facing * s  # image-x component of the direction the person faces
    fwd_sign = float(np.sign(fwd)) if abs(fwd) > 0.2 else float(rng.choice([-1.0, 1.0]))
    depth_left = -facing * s
    far = "l" if depth_left < 0 else "r"
    near = "r" if far == "l" else "l"
    outward = {"l": facing, "r": -facing}  # image-x sign of "away from the body" per side
    width_scale = math.sqrt(c * c + (0.6 * s) ** 2)

    def jit() -> float:  # per-limb proportion jitter
        return rng.uniform(0.93, 1.07)

    L = {"torso": 0.29 * H * jit(), "neck": 0.05 * H, "head": 0.13 * H * jit(),
         "upper_arm": 0.17 * H * jit(), "forearm": 0.15 * H * jit(),
         "thigh": 0.245 * H * jit(), "shank": 0.245 * H * jit()}
    sho_half = 0.105 * H * rng.uniform(0.88, 1.12)
    hip_half = 0.055 * H * rng.uniform(0.9, 1.15)

    tilt = rng.uniform(30, 75) * fwd_sign if pose == "bend" else rng.normal(0, 4)
    up = np.array([math.sin(math.radians(tilt)), -math.cos(math.radians(tilt))])
    perp = np.array([-up[1], up[0]])  # image +x when upright
    pts = np.zeros((len(BODY_JOINTS), 2))
    pelvis = np.zeros(2)
    torso_len = L["torso"] * (rng.uniform(0.85, 1.0) if pose == "bend" else 1.0)
    thorax = pelvis + up * torso_len
    pts[J["pelvis"]], pts[J["thorax"]] = pelvis, thorax
    for side in ("l", "r"):
        pts[J[f"{side}_shoulder"]] = thorax + perp * outward[side] * sho_half * c - up * 0.02 * H
        pts[J[f"{side}_hip"]] = pelvis + perp * outward[side] * hip_half * c

    # Head: a tilted ellipse above the neck; face marks on a sphere turned by ``face_yaw``.
    head_tilt = tilt + rng.normal(0, 8)
    hup = np.array([math.sin(math.radians(head_tilt)), -math.cos(math.radians(head_tilt))])
    hperp = np.array([-hup[1], hup[0]])
    upper_neck = thorax + up * L["neck"]
    head_len = L["head"]
    head_center = upper_neck + hup * head_len * 0.5
    ry, rx = head_len * 0.5, head_len * 0.41
    pts[J["upper_neck"]], pts[J["head_top"]] = upper_neck, upper_neck + hup * head_len
    face_yaw = float(np.clip(yaw * rng.uniform(0.6, 1.2) + rng.normal(0, 10), -85, 85))
    face_depth = {}
    for name, (theta, elev) in FACE_MARKS.items():
        ang = math.radians(theta + face_yaw)
        pts[J[name]] = head_center + hperp * facing * rx * math.sin(ang) + hup * elev * ry
        face_depth[name] = facing * math.cos(ang)

    arm, leg = _limb_angles(rng, pose, side_view, outward, fwd_sign, tilt)

    hand_r = max(1.0, 0.03 * H)
    for side in ("l", "r"):
        up_a, fa_a, fu, ff = arm[side]
        elbow = pts[J[f"{side}_shoulder"]] + _direction(up_a) * L["upper_arm"] * fu
        pts[J[f"{side}_elbow"]] = elbow
        pts[J[f"{side}_wrist"]] = elbow + _direction(fa_a) * L["forearm"] * ff
        th_a, sh_a, fth, fsh = leg[side]
        knee = pts[J[f"{side}_hip"]] + _direction(th_a) * L["thigh"] * fth
        pts[J[f"{side}_knee"]] = knee
        pts[J[f"{side}_ankle"]] = knee + _direction(sh_a) * L["shank"] * fsh

    def thick(frac: float) -> int:  # line thickness from a fraction of the height
        return max(2, int(round(frac * H)))

    prims: list = []

    def arm_prims(side: str) -> None:
        sho, elb, wri = (pts[J[f"{side}_{n}"]] for n in ("shoulder", "elbow", "wrist"))
        prims.append(("line", P[f"{side}_upper_arm"], sho, elb, thick(0.055)))
        prims.append(("line", P[f"{side}_forearm"], elb, wri, thick(0.045)))
        d = wri - elb
        d = d / (np.linalg.norm(d) + 1e-9)
        prims.append(("circle", P[f"{side}_hand"], wri + d * hand_r * 0.9, hand_r))

    def leg_prims(side: str) -> None:
        hip, kne, ank = (pts[J[f"{side}_{n}"]] for n in ("hip", "knee", "ankle"))
        prims.append(("line", P[f"{side}_thigh"], hip, kne, thick(0.085)))
        prims.append(("line", P[f"{side}_shank"], kne, ank, thick(0.065)))
        foot_c = ank + np.array([fwd * 0.035 * H, 0.022 * H])
        axes = (0.022 * H + 0.03 * H * abs(fwd), 0.02 * H)
        prims.append(("ellipse", P[f"{side}_foot"], foot_c, axes, 0.0, 0.0, 360.0))

    arm_prims(far)
    leg_prims(far)
    leg_prims(near)
    band_top, band_bottom = pelvis + up * 0.07 * H, pelvis - up * 0.05 * H
    band_half = (hip_half + 0.055 * H) * width_scale
    prims.append(("poly", P["hips"], np.array([band_top - perp * band_half, band_top + perp * band_half,
                                               band_bottom + perp * band_half, band_bottom - perp * band_half])))
    top_half = (sho_half + 0.03 * H) * width_scale
    waist = pelvis + up * torso_len * 0.45
    waist_half = (hip_half + 0.045 * H) * width_scale
    shoulder_line = thorax - up * 0.01 * H
    prims.append(("poly", P["torso"], np.array([
        shoulder_line - perp * top_half, shoulder_line + perp * top_half, waist + perp * waist_half,
        band_top + perp * band_half, band_top - perp * band_half, waist - perp * waist_half])))
    prims.append(("line", P["neck"], thorax, upper_neck + hup * 0.1 * head_len, thick(0.05)))
    angle = math.degrees(math.atan2(hup[0], -hup[1]))  # ellipse rotation (cv2: degrees, clockwise)
    ear_axes = (max(0.8, 0.17 * rx), max(1.0, 0.3 * ry))
    if facing > 0:
        prims.append(("ellipse", P["hair"], head_center + hup * 0.06 * ry, (rx * 1.04, ry * 1.02), angle, 0.0, 360.0))
        for ear in ("l_ear", "r_ear"):
            if face_depth[ear] > -0.35:
                prims.append(("ellipse", P[ear], pts[J[ear]], ear_axes, angle, 0.0, 360.0))
        prims.append(("ellipse", P["head"], head_center - hup * 0.05 * ry, (rx * 0.95, ry * 0.92), angle, 0.0, 360.0))
        prims.append(("ellipse", P["hair"], head_center, (rx * 1.0, ry * 1.0), angle, 180.0 + 15.0, 360.0 - 15.0))
        eye_r = max(0.7, 0.11 * rx)
        for eye in ("l_eye", "r_eye"):
            if face_depth[eye] > 0.2:
                prims.append(("circle", P["eyes"], pts[J[eye]], eye_r))
        if face_depth["nose"] > 0.0:
            prims.append(("circle", P["nose"], pts[J["nose"]], max(0.7, 0.12 * rx)))
            mouth = pts[J["nose"]] - hup * 0.3 * ry
            prims.append(("line", P["mouth"], mouth - hperp * 0.22 * rx, mouth + hperp * 0.22 * rx, max(1, int(0.08 * rx))))
    else:
        prims.append(("ellipse", P["head"], head_center, (rx, ry), angle, 0.0, 360.0))
        prims.append(("ellipse", P["hair"], head_center + hup * 0.08 * ry, (rx * 1.02, ry * 0.95), angle, 0.0, 360.0))
        for ear in ("l_ear", "r_ear"):
            if face_depth[ear] > -0.5:
                prims.append(("ellipse", P[ear], pts[J[ear]], ear_axes, angle, 0.0, 360.0))
    arm_prims(near)

    colours, textures = _sample_palette(rng, far)
    return Figure(joints=pts, face_depth=face_depth, prims=prims, colours=colours, textures=textures,
                  height=H, head_center=head_center, head_len=head_len)


def _fixed(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * ONE)), int(round(p[1] * ONE))


def _draw_parts(canvas: np.ndarray, prims: list, origin: np.ndarray) -> None:
    """Draw primitives as part ids into a uint8 canvas whose pixel (0, 0) is image ``origin``."""
    for kind, part, *geo in prims:
        if kind == "line":
            cv2.line(canvas, _fixed(geo[0] - origin), _fixed(geo[1] - origin), part, int(geo[2]), cv2.LINE_8, SHIFT)
        elif kind == "circle":
            cv2.circle(canvas, _fixed(geo[0] - origin), int(round(geo[1] * ONE)), part, -1, cv2.LINE_8, SHIFT)
        elif kind == "ellipse":
            axes = (max(1, int(round(geo[1][0] * ONE))), max(1, int(round(geo[1][1] * ONE))))
            cv2.ellipse(canvas, _fixed(geo[0] - origin), axes, geo[2], geo[3], geo[4], part, -1, cv2.LINE_8, SHIFT)
        else:
            poly = np.round((geo[0] - origin) * ONE).astype(np.int32)
            cv2.fillPoly(canvas, [poly], part, cv2.LINE_8, SHIFT)


def _texture(kind: str, period: float, angle: float, xx: np.ndarray, yy: np.ndarray, rng) -> np.ndarray:
    """Multiplicative cloth pattern in [0.7, 1] on a pixel grid."""
    if kind == "stripes":
        a = math.radians(angle)
        return np.where(((xx * math.cos(a) + yy * math.sin(a)) / period) % 2.0 < 1.0, 1.0, 0.74)
    if kind == "checks":
        return np.where(((xx // period + yy // period) % 2) == 0, 1.0, 0.8)
    if kind == "noise":
        return rng.uniform(0.8, 1.0, size=xx.shape)
    return np.ones_like(xx, dtype=np.float64)


def _render_person(image, owner, fig: Figure, pid: int, rng) -> tuple[np.ndarray, np.ndarray] | None:
    """Composite one figure; returns (part map of its box, box origin) or None if off-image."""
    height, width = owner.shape
    x0, y0, x1, y1 = fig.extent()
    bx0, by0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    bx1, by1 = min(width, int(math.ceil(x1)) + 1), min(height, int(math.ceil(y1)) + 1)
    if bx1 <= bx0 or by1 <= by0:
        return None
    origin = np.array([bx0, by0], dtype=np.float64)
    parts = np.zeros((by1 - by0, bx1 - bx0), dtype=np.uint8)
    _draw_parts(parts, fig.prims, origin)
    lut = np.zeros((len(PARTS) + 1, 3), dtype=np.float32)
    for name, colour in fig.colours.items():
        lut[P[name]] = colour
    colour = lut[parts]  # [h, w, 3]
    if fig.textures:
        yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
        for spec in dict.fromkeys(fig.textures.values()):  # ordered: no hash-seed dependence
            ids = [P[p] for p, s in fig.textures.items() if s == spec]
            where = np.isin(parts, ids)
            if where.any() and spec[0] != "plain":
                pattern = _texture(spec[0], spec[1], spec[2], xx[where], yy[where], rng)
                colour[where] *= pattern[:, None]
    if fig.height >= 50:  # dark outlines between parts and around the person
        edge = np.zeros(parts.shape, dtype=bool)
        dx = parts[:, 1:] != parts[:, :-1]
        dy = parts[1:, :] != parts[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        colour[edge] *= 0.6
    drawn = parts > 0
    roi = image[by0:by1, bx0:bx1]
    roi[drawn] = colour[drawn].astype(np.uint8)
    owner[by0:by1, bx0:bx1][drawn] = pid
    return parts, origin


def _background(rng, width: int, height: int) -> np.ndarray:
    """A cluttered scene: gradient, colour blotches, floor, shapes, sticks and text."""
    top, bottom = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.ascontiguousarray(np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).astype(np.uint8))
    blot = rng.integers(0, 256, size=(height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8)
    blot = cv2.resize(blot, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.addWeighted(image, 0.65, blot, 0.35, 0.0)
    if rng.random() < 0.6:  # a floor with perspective lines
        horizon = int(rng.uniform(0.35, 0.75) * height)
        floor = _random_colour(rng, val=(0.2, 0.7))
        cv2.rectangle(image, (0, horizon), (width, height), floor, -1)
        line = _shade(floor, 0.7)
        for _ in range(int(rng.integers(3, 9))):
            cv2.line(image, (int(rng.uniform(0, width)), horizon), (int(rng.uniform(-width, 2 * width)), height), line, 1)
    for _ in range(int(rng.integers(8, 30))):
        colour = _random_colour(rng, sat=(0.0, 1.0), val=(0.1, 1.0))
        kind = rng.integers(6)
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = int(rng.uniform(0.03, 0.3) * min(width, height))
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1 if rng.random() < 0.7 else 2)
        elif kind == 1:
            cv2.circle(image, (x, y), max(2, size // 2), colour, -1 if rng.random() < 0.7 else 2)
        elif kind == 2:
            cv2.ellipse(image, (x, y), (max(2, size // 2), max(2, size // 4)), float(rng.uniform(0, 180)), 0, 360, colour, -1)
        elif kind == 3:  # limb-like sticks, the hard distractors
            end = (x + int(rng.normal(0, size)), y + int(rng.normal(0, size)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(2, 10)))
        elif kind == 4:
            pts = np.stack([rng.uniform(x - size, x + size, 5), rng.uniform(y - size, y + size, 5)], 1).astype(np.int32)
            cv2.fillPoly(image, [pts], colour)
        else:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, size=int(rng.integers(2, 7))))
            cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.4, 1.5)), colour, int(rng.integers(1, 3)))
    return image


def _draw_occluders(image, owner, figures: list, rng) -> None:
    """Objects in front of people: boxes, discs, poles and counters (owner id 255)."""
    if not figures or rng.random() > 0.45:
        return
    height = owner.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        fig = figures[int(rng.integers(len(figures)))]
        h = fig.height
        colour = _random_colour(rng, sat=(0.0, 0.8), val=(0.2, 0.9))
        layer = np.zeros_like(owner)
        anchor = fig.joints[int(rng.integers(len(BODY_JOINTS)))] + rng.normal(0, 0.1 * h, 2)
        kind = rng.integers(4)
        if kind == 0:
            half = np.array([rng.uniform(0.08, 0.22), rng.uniform(0.08, 0.22)]) * h
            p0, p1 = (anchor - half).astype(int), (anchor + half).astype(int)
            for canvas, value in ((image, colour), (layer, 255)):
                cv2.rectangle(canvas, tuple(p0), tuple(p1), value, -1)
        elif kind == 1:
            r = int(max(2, rng.uniform(0.07, 0.18) * h))
            for canvas, value in ((image, colour), (layer, 255)):
                cv2.circle(canvas, tuple(anchor.astype(int)), r, value, -1)
        elif kind == 2:  # a pole across the whole image
            x = int(anchor[0])
            t = int(max(2, rng.uniform(0.04, 0.1) * h))
            for canvas, value in ((image, colour), (layer, 255)):
                cv2.line(canvas, (x, 0), (x + int(rng.normal(0, 10)), height), value, t)
        else:  # a counter hiding the lower legs
            knees = (fig.joints[J["l_knee"]] + fig.joints[J["r_knee"]]) / 2
            top = int(knees[1] + rng.uniform(-0.05, 0.1) * h)
            x0 = int(knees[0] - rng.uniform(0.2, 0.5) * h)
            x1 = int(knees[0] + rng.uniform(0.2, 0.5) * h)
            for canvas, value in ((image, colour), (layer, 255)):
                cv2.rectangle(canvas, (x0, top), (x1, height), value, -1)
        owner[layer == 255] = 255


def _place(rng, fig: Figure, width: int, height: int, placed: list) -> None:
    """Move the figure into the image: free, overlapping an earlier one, or truncated."""
    x0, y0, x1, y1 = fig.extent()
    fw, fh = x1 - x0, y1 - y0
    if placed and rng.random() < 0.5:
        other = placed[int(rng.integers(len(placed)))]
        ox0, oy0, ox1, oy1 = other.extent()
        cx = (ox0 + ox1) / 2 + rng.choice([-1, 1]) * rng.uniform(0.3, 0.8) * max(fw, ox1 - ox0)
        bottom = oy1 + rng.normal(0, 0.08 * (oy1 - oy0))
        dx, dy = cx - (x0 + x1) / 2, bottom - y1
    else:
        slack = 0.3 if rng.random() < 0.12 else 0.0  # some people are cut by the border
        lo_x, hi_x = -x0 - slack * fw, width - 1 - x1 + slack * fw
        lo_y, hi_y = -y0 - slack * fh, height - 1 - y1 + slack * fh
        dx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (width - x0 - x1) / 2
        dy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (height - y0 - y1) / 2
    # Keep the pelvis inside so every person has labelled joints.
    pelvis = fig.joints[J["pelvis"]] + np.array([dx, dy])
    dx += np.clip(pelvis[0], 2, width - 3) - pelvis[0]
    dy += np.clip(pelvis[1], 2, height - 3) - pelvis[1]
    fig.translate(np.array([dx, dy]))


def _label_person(fig: Figure, parts, origin, owner, pid: int) -> np.ndarray:
    """Visibility of each body joint: 0 unlabelled, 1 occluded, 2 visible (COCO meaning)."""
    height, width = owner.shape
    vis = np.zeros(len(BODY_JOINTS), dtype=np.int64)
    for j, name in enumerate(BODY_JOINTS):
        x, y = fig.joints[j]
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            continue
        depth = fig.face_depth.get(name)
        if depth is not None:
            hidden, gone = (-0.15, -0.5) if name.endswith("_ear") else (0.15, -0.2)
            if depth < gone:
                continue
            if depth < hidden:
                vis[j] = 1
                continue
        probe = fig.joints[j]
        if name == "head_top":  # the top sits on the outline: look just inside
            probe = probe + (fig.head_center - probe) * min(1.0, 1.5 / max(1e-6, fig.head_len / 2))
        px = int(np.clip(round(probe[0]), 0, width - 1))
        py = int(np.clip(round(probe[1]), 0, height - 1))
        lx, ly = px - int(origin[0]), py - int(origin[1])
        own_part = parts[ly, lx] if 0 <= ly < parts.shape[0] and 0 <= lx < parts.shape[1] else 0
        seen = owner[py, px] == pid and own_part in ADJACENT_IDS[j]
        vis[j] = 2 if seen else 1
    return vis


def render_image(seed: int, split: str, index: int, num_people: int) -> tuple[bytes, int, int, list[dict]]:
    """Draw one image.

    Args:
        seed: dataset seed; split, index: which image (each image has its own generator).
        num_people: people in the image (1-4).

    Returns:
        (JPEG bytes, width, height, people), each person a dict with ``joints`` [21, 2] (body
        model order), ``vis`` [21], ``rle`` (COCO RLE of its visible pixels), ``area`` (visible
        pixels), ``box`` (x, y, w, h of the visible pixels, or None), ``full_area`` (drawn
        pixels before occlusion), ``height``, ``head_center`` and ``head_len``.
    """
    rng = np.random.default_rng([seed, SPLITS[split], index])
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    image = _background(rng, width, height)
    owner = np.zeros((height, width), dtype=np.uint8)
    figures: list[Figure] = []
    max_h = min(300.0, 0.92 * height)
    for _ in range(num_people):
        person_h = float(math.exp(rng.uniform(math.log(30.0), math.log(max_h))))
        fig = _sample_figure(rng, person_h)
        _place(rng, fig, width, height, figures)
        figures.append(fig)
    order = sorted(range(len(figures)), key=lambda i: figures[i].extent()[3])  # far (higher) first
    rendered = {}
    for i in order:
        result = _render_person(image, owner, figures[i], i + 1, rng)
        rendered[i] = result
    _draw_occluders(image, owner, figures, rng)
    people = []
    for i, fig in enumerate(figures):
        parts, origin = rendered[i] if rendered[i] is not None else (np.zeros((1, 1), np.uint8), np.zeros(2))
        mask = owner == i + 1
        ys, xs = np.nonzero(mask)
        box = None
        if len(xs):
            box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        people.append({
            "joints": fig.joints, "vis": _label_person(fig, parts, origin, owner, i + 1),
            "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(len(xs)), "box": box,
            "full_area": int((parts > 0).sum()), "height": fig.height,
            "head_center": fig.head_center, "head_len": fig.head_len,
        })
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * float(rng.uniform(2, 7))
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.4, 0.9)))
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return jpeg.tobytes(), width, height, people


def _render_job(job: tuple) -> tuple[bytes, int, int, list[dict]]:
    return render_image(*job)


def _rendered(jobs: list[tuple], workers: int):
    """Rendered images in job order, drawn here or by a pool of ``workers`` processes."""
    if workers <= 1:
        for job in jobs:
            yield render_image(*job)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=8)


def _plan(seed: int, split: str, persons: int) -> list[int]:
    """People per image so that the split holds exactly ``persons`` people."""
    rng = np.random.default_rng([seed, SPLITS[split], 10**6])
    counts, total = [], 0
    values = [n for n, _ in PEOPLE_PER_IMAGE]
    probs = [p for _, p in PEOPLE_PER_IMAGE]
    while total < persons:
        n = min(int(rng.choice(values, p=probs)), persons - total)
        counts.append(n)
        total += n
    return counts


def _coco_person(person: dict, ann_id: int, image_id: int) -> dict:
    vis = person["vis"][list(COCO_FROM_BODY)]
    joints = person["joints"][list(COCO_FROM_BODY)]
    keypoints = []
    for (x, y), v in zip(joints, vis):
        keypoints += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
    area = person["area"]
    if person["box"] is not None and area >= 0.01 * person["full_area"]:
        bbox = list(person["box"])
    else:  # (almost) fully hidden: the box of its labelled joints, at least 2 px wide
        pts = joints[vis > 0] if (vis > 0).any() else joints
        lo, hi = pts.min(0), pts.max(0)
        bbox = [float(lo[0]), float(lo[1]), float(max(2.0, hi[0] - lo[0])), float(max(2.0, hi[1] - lo[1]))]
        area = max(area, 1)
    return {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
        "bbox": [round(v, 2) for v in bbox], "area": float(area), "num_keypoints": int((vis > 0).sum()),
        "keypoints": keypoints, "segmentation": person["rle"],
    }


def _mpii_person(person: dict, file_name: str, width: int, height: int, rng) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """HRNet-style MPII entry (1-based) plus its gt_valid.mat columns."""
    joints = person["joints"][list(MPII_FROM_BODY)]
    inside = (joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1)
    one_based = np.where(inside[:, None], joints + 1.0, -1.0)
    lo, hi = joints.min(0), joints.max(0)
    h = person["height"]
    center = (lo + hi) / 2 + np.array([0.0, -0.08 * (hi[1] - lo[1])]) + rng.normal(0, 0.02 * h, 2) + 1.0
    scale = h * rng.uniform(1.05, 1.2) / 200.0
    half = person["head_len"] / 2
    hc = person["head_center"] + 1.0
    head_box = np.array([hc[0] - half, hc[1] - half, hc[0] + half, hc[1] + half])
    entry = {
        "image": file_name,
        "center": [round(float(v), 2) for v in center],
        "scale": round(float(scale), 6),
        "joints": [[round(float(x), 2), round(float(y), 2)] for x, y in one_based],
        "joints_vis": [int(v) for v in inside],
        "head_box": [round(float(v), 2) for v in head_box],
    }
    pos = np.where(inside[:, None], one_based, 0.0)
    return entry, (~inside).astype(np.float64), pos, head_box.reshape(2, 2)


def _coco_categories() -> list[dict]:
    skeleton = [[a + 1, b + 1] for a, b in COCO_META.skeleton]  # 1-based, as in the official files
    return [{"supercategory": "person", "id": 1, "name": "person",
             "keypoints": list(COCO_META.joint_names), "skeleton": skeleton}]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _link(link: Path, target: str) -> None:
    """A relative symlink ``link -> target`` (kept when it already points there)."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.exists():
        raise DataError(f"{link} exists and is not a symlink to {target}; remove it to regenerate")
    try:
        link.symlink_to(target, target_is_directory=True)
    except OSError as err:
        raise DataError(f"cannot create the symlink {link} -> {target}: {err}") from None


PROGRESS_SECONDS = 15.0  # generation prints a progress line this often


def _synthesize_split(out: Path, split: str, persons: int, seed: int, workers: int) -> dict:
    counts = _plan(seed, split, persons)
    image_dir = out / "images" / split
    if image_dir.is_dir():
        for old in image_dir.glob("*.jpg"):
            old.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    id_base = 0 if split == "train" else 1_000_000
    jobs = [(seed, split, i, n) for i, n in enumerate(counts)]
    results = _rendered(jobs, workers)
    rng = np.random.default_rng([seed, SPLITS[split], 2 * 10**6])  # MPII centres and detections
    images, annotations, detections, mpii = [], [], [], []
    missing, pos, heads = [], [], []
    ann_id = 0
    vis_counts = np.zeros(3, dtype=np.int64)
    shown = time.monotonic()
    print(f"synthetic people, {split}: drawing {len(jobs)} images ({persons} persons) into {out.name}/", flush=True)
    for i, (jpeg, width, height, people) in enumerate(results):
        if time.monotonic() - shown >= PROGRESS_SECONDS:  # a line the notebook and papermill --log-output show
            shown = time.monotonic()
            print(f"synthetic people, {split}: {i}/{len(jobs)} images", flush=True)
        image_id = id_base + i + 1
        file_name = f"{image_id:012d}.jpg"
        (image_dir / file_name).write_bytes(jpeg)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for person in people:
            ann_id += 1
            ann = _coco_person(person, id_base + ann_id, image_id)
            annotations.append(ann)
            vis_counts += np.bincount(np.asarray(ann["keypoints"][2::3]), minlength=3)
            entry, miss, p, hb = _mpii_person(person, f"{split}/{file_name}", width, height, rng)
            mpii.append(entry)
            missing.append(miss)
            pos.append(p)
            heads.append(hb)
            if split == "val":
                x, y, w, h = ann["bbox"]
                for dup in range(2 if rng.random() < 0.2 else 1):
                    spread = 0.05 * (1 + 2 * dup)
                    bx = x + rng.normal(0, spread * w)
                    by = y + rng.normal(0, spread * h)
                    bw, bh = w * rng.uniform(0.9, 1.12), h * rng.uniform(0.9, 1.12)
                    score = float(np.clip(rng.uniform(0.6, 1.0) * (0.5 if dup else 1.0), 0.01, 1.0))
                    detections.append({"image_id": image_id, "category_id": 1,
                                       "bbox": [round(float(v), 2) for v in (bx, by, max(bw, 2.0), max(bh, 2.0))],
                                       "score": round(score, 4)})
        if split == "val" and rng.random() < 0.3:  # a false positive
            bw, bh = rng.uniform(10, width / 3), rng.uniform(20, height / 2)
            detections.append({"image_id": image_id, "category_id": 1,
                               "bbox": [round(float(rng.uniform(0, width - bw)), 2), round(float(rng.uniform(0, height - bh)), 2),
                                        round(float(bw), 2), round(float(bh), 2)],
                               "score": round(float(rng.uniform(0.02, 0.4)), 4)})
    coco = {"info": {"description": f"cdkd synthetic people, split {split}, seed {seed}"},
            "licenses": [], "images": images, "annotations": annotations, "categories": _coco_categories()}
    _write_json(out / "coco" / "annotations" / f"person_keypoints_{split}.json", coco)
    mpii_name = "train" if split == "train" else "valid"
    _write_json(out / "mpii" / "annot" / f"{mpii_name}.json", mpii)
    if split == "val":
        from cdkd.metrics.mpii import write_gt_valid

        _write_json(out / "coco" / "person_detection_results" / "det_val.json", detections)
        write_gt_valid(out / "mpii" / "annot" / "gt_valid.mat", np.stack(pos) - 1.0,  # 0-based [N, 16, 2]
                       np.stack(missing) == 0, np.stack(heads) - 1.0)
    return {"images": len(images), "persons": len(annotations),
            "keypoints_visible": int(vis_counts[2]), "keypoints_occluded": int(vis_counts[1]),
            "keypoints_unlabelled": int(vis_counts[0]), "detections": len(detections)}


def synthesize(out_dir: str | Path, train: int = 4000, val: int = 1000, seed: int = 0, workers: int = 1) -> dict:
    """Generate the synthetic people dataset (COCO and MPII formats over the same images).

    Args:
        out_dir: output folder (created); earlier images of the same splits are replaced.
        train, val: number of PERSONS per split.
        seed: everything is a function of (seed, split, image index).
        workers: processes drawing images (the output does not depend on it).

    Returns:
        Summary dict (also written, without timing, to ``out_dir/synth_summary.json``).
    """
    if train < 1 or val < 1:
        raise DataError(f"synthesize needs at least one person per split; got train={train}, val={val}")
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "coco").mkdir(parents=True, exist_ok=True)
    (out / "mpii").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    marker = out / "synth_summary.json"
    if marker.exists():
        marker.unlink()
    _link(out / "coco" / "images", "../images")
    _link(out / "mpii" / "images", "../images")
    summary = {
        "generator": "cdkd.data.synthetic", "seed": seed, "requested": {"train": train, "val": val},
        "splits": {"train": _synthesize_split(out, "train", train, seed, workers),
                   "val": _synthesize_split(out, "val", val, seed, workers)},
        "coco_root": "coco", "mpii_root": "mpii",
    }
    marker.write_text(json.dumps(summary, indent=1))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["out_dir"] = str(out)
    return summary


def ensure_synthetic(root: str | Path = "data/synth", train: int = 4000, val: int = 1000, seed: int = 0,
                     workers: int = 1) -> dict:
    """Generate the synthetic set into ``root`` unless a complete one with these arguments is there.

    Returns:
        The summary (read back from ``synth_summary.json`` when nothing had to be done).

    Raises:
        DataError: a complete set with other arguments is in ``root`` (use another root).
    """
    marker = Path(root) / "synth_summary.json"
    if marker.is_file():
        summary = json.loads(marker.read_text())
        wanted = {"train": train, "val": val}
        if summary.get("seed") == seed and summary.get("requested") == wanted:
            return summary
        raise DataError(
            f"{root} holds a synthetic set with seed {summary.get('seed')} and {summary.get('requested')} persons, "
            f"not seed {seed} and {wanted}; choose another root or delete it"
        )
    return synthesize(root, train=train, val=val, seed=seed, workers=workers)
