"""Scale-adaptive projector ensemble (SAPE): feature distillation across resolutions.

Implements Sec. III-A (Eq. 1-5) of the CDKD paper. The student's last feature F^s [B, J, h, w]
(SimCC's ``final_layer`` output at a quarter of the input size) is mapped by K projectors
(each FC + ReLU, after "Improved feature distillation via projector ensemble", Chen et al. 2022)
to the teacher's feature size [B, J, H', W']; a scale-adaptive unit (SAU, after selective-kernel
networks, Li et al. 2019) weighs the K projector outputs per sample and per joint channel; the
result is compared with the teacher feature F^t by a cosine distance (Eq. 5).

Projector kinds (``projector``):

* ``'full'``: one Linear over the whole flattened feature, J*h*w -> J*H'*W', as in the released
  code (PAPER_NOTES item 5). At 64x64 -> 256x256 with J=16 that is 4096 x 65536 = 268M weights per
  projector; see :func:`projector_size` and docs/projectors.md.
* ``'light'``: a Linear h*w -> H'*W' applied to every joint channel (shared across the J channels,
  one per projector): the same "FC layer" mapping each joint's feature plane, J^2 times smaller.

SAU, paper version (Eq. 1-3), ``sau='paper'``:

* Eq. 1: parallel branches conv(k x k) + BN + ReLU over F^s, J -> J channels, one per kernel size
  in ``sau_kernels`` (Table VII best: 3, 5, 7, 7).
* Eq. 2, Fuse(Concat[F'_1..F'_n]): "a fully connected layer, a global pooling layer and a
  summation". We concatenate the n branch outputs along the channels [B, n*J, h, w], global-average-
  pool them to [B, n*J], and apply one FC (n*J -> ``sau_hidden``) followed by ReLU. An FC over a
  concatenation *is* the sum of one FC per branch (the summation). Pooling before the FC is exact
  for the linear FC itself (they commute); the ReLU comes after the pooling here, which is our
  reading of the order, and cheaper. Result: z [B, sau_hidden].
* Eq. 3, Select: K fully connected layers z -> J (one per projector), concatenated to [B, K, J]
  and softmax-normalised across the K projectors: w_k is a per-sample, per-joint-channel weight.
* Eq. 4: F_out = sum_k w_k * F^P_k (w broadcast over the H' x W' plane).

SAU, released version (PAPER_NOTES item 4), ``sau='official'``: three branches conv(3/5/7) + BN +
ReLU summed (not concatenated), global average pooling, FC J -> 32 (no activation), then K+1 FCs
32 -> J and a softmax over K+1 candidates: the K projector outputs and their mean.

``sau='none'``: plain mean of the projectors (the "projector ensemble" row of Table III).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROJECTOR_KINDS = ("light", "full")
SAU_KINDS = ("paper", "official", "none")
OFFICIAL_SAU_KERNELS = (3, 5, 7)
OFFICIAL_SAU_HIDDEN = 32


def projector_size(kind: str, J: int, h: int, w: int, H: int, W: int, K: int = 1) -> dict[str, int]:
    """Analytic size of K projectors of one kind mapping [J, h, w] to [J, H, W].

    Args:
        kind: 'full' (Linear J*h*w -> J*H*W) or 'light' (Linear h*w -> H*W shared over J).
        J: joints (feature channels); h, w: student feature size; H, W: teacher feature size.
        K: number of projectors.

    Returns:
        dict with 'params' (weights + biases), 'bytes_fp32' (the weights alone),
        'bytes_adam' (weights + Adam's two moment buffers) and 'bytes_train' (weights + gradients
        + Adam moments), all for fp32.
    """
    if kind == "full":
        per = (J * h * w) * (J * H * W) + J * H * W
    elif kind == "light":
        per = (h * w) * (H * W) + H * W
    else:
        raise ValueError(f"config key 'distill.projector' is {kind!r}; choose one of {PROJECTOR_KINDS}")
    params = K * per
    return {"params": params, "bytes_fp32": 4 * params, "bytes_adam": 12 * params, "bytes_train": 16 * params}


class Projector(nn.Module):
    """One projector P_k = ReLU(FC(F^s)) from [B, J, h, w] to [B, J, H, W].

    Args:
        kind: 'full' or 'light' (see the module docstring).
        joints: J.
        in_size: (h, w) of the student feature.
        out_size: (H, W) of the teacher feature.
        relu: apply the ReLU (True for SAPE; the FC alignment baseline uses False).
    """

    def __init__(self, kind: str, joints: int, in_size: tuple[int, int], out_size: tuple[int, int],
                 relu: bool = True):
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"config key 'distill.projector' is {kind!r}; choose one of {PROJECTOR_KINDS}")
        self.kind, self.joints, self.relu = kind, joints, relu
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        n_in, n_out = in_size[0] * in_size[1], out_size[0] * out_size[1]
        if kind == "full":
            n_in, n_out = joints * n_in, joints * n_out
        self.fc = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(self.fc.weight)  # as released; bias keeps nn.Linear's default

    def forward(self, f: Tensor) -> Tensor:
        """[B, J, h, w] -> [B, J, H, W]."""
        b = f.shape[0]
        x = f.reshape(b, -1) if self.kind == "full" else f.reshape(b, self.joints, -1)  # [B, J*h*w] | [B, J, h*w]
        x = self.fc(x)  # [B, J*H*W] | [B, J, H*W]
        if self.relu:
            x = F.relu(x)
        return x.reshape(b, self.joints, *self.out_size)  # [B, J, H, W]


def _branch(joints: int, kernel: int, bias: bool) -> nn.Sequential:
    if kernel % 2 == 0 or kernel <= 0:
        raise ValueError(f"config key 'distill.sau_kernels' has {kernel}; SAU kernels must be odd and positive")
    return nn.Sequential(
        nn.Conv2d(joints, joints, kernel, padding=kernel // 2, bias=bias),
        nn.BatchNorm2d(joints),
        nn.ReLU(inplace=False),
    )


class SAU(nn.Module):
    """Scale-adaptive unit, paper version (Eq. 1-3): per-sample, per-channel projector weights.

    Args:
        joints: J, channels of F^s.
        num_projectors: K, the number of weights per channel.
        kernels: kernel sizes of the parallel conv branches (Eq. 1).
        hidden: width of the fused descriptor z (Eq. 2).
    """

    def __init__(self, joints: int, num_projectors: int, kernels: tuple[int, ...] = (3, 5, 7, 7), hidden: int = 32):
        super().__init__()
        if not kernels:
            raise ValueError("config key 'distill.sau_kernels' is empty; the SAU needs at least one branch")
        self.branches = nn.ModuleList(_branch(joints, k, bias=False) for k in kernels)
        self.fuse = nn.Linear(len(kernels) * joints, hidden)
        self.select = nn.ModuleList(nn.Linear(hidden, joints) for _ in range(num_projectors))

    def forward(self, f: Tensor) -> Tensor:
        """F^s [B, J, h, w] -> weights w [B, K, J] (softmax over K)."""
        branches = torch.cat([branch(f) for branch in self.branches], dim=1)  # [B, n*J, h, w]  (Eq. 1, concat)
        pooled = branches.mean(dim=(2, 3))  # [B, n*J]  global pooling (commutes with the FC)
        z = F.relu(self.fuse(pooled))  # [B, hidden]  (Eq. 2)
        logits = torch.stack([fc(z) for fc in self.select], dim=1)  # [B, K, J]  (Eq. 3)
        return logits.softmax(dim=1)


class OfficialSAU(nn.Module):
    """Scale-adaptive unit as released (PAPER_NOTES item 4): weights for K projectors + their mean.

    Args:
        joints: J.
        num_projectors: K; the unit returns K+1 weights per channel.
    """

    def __init__(self, joints: int, num_projectors: int):
        super().__init__()
        self.branches = nn.ModuleList(_branch(joints, k, bias=True) for k in OFFICIAL_SAU_KERNELS)
        self.fc = nn.Linear(joints, OFFICIAL_SAU_HIDDEN)
        self.fcs = nn.ModuleList(nn.Linear(OFFICIAL_SAU_HIDDEN, joints) for _ in range(num_projectors + 1))

    def forward(self, f: Tensor) -> Tensor:
        """F^s [B, J, h, w] -> weights [B, K+1, J] (softmax over K+1)."""
        summed = torch.stack([branch(f) for branch in self.branches], dim=0).sum(0)  # [B, J, h, w]
        z = self.fc(summed.mean(dim=(2, 3)))  # [B, 32]
        logits = torch.stack([fc(z) for fc in self.fcs], dim=1)  # [B, K+1, J]
        return logits.softmax(dim=1)


class SAPE(nn.Module):
    """Projector ensemble + scale-adaptive unit (Eq. 1-4): F^s [B,J,h,w] -> F_out [B,J,H',W'].

    Args:
        joints: J.
        in_size: (h, w) of the student feature.
        out_size: (H', W') of the teacher feature.
        num_projectors: K (Table VI best: 3).
        projector: 'light' or 'full'.
        sau: 'paper', 'official' or 'none' (mean of the projectors).
        sau_kernels: branch kernel sizes of the paper SAU (Table VII best: 3, 5, 7, 7).
        sau_hidden: width of the paper SAU's fused descriptor.
    """

    def __init__(self, joints: int, in_size: tuple[int, int], out_size: tuple[int, int], num_projectors: int = 3,
                 projector: str = "light", sau: str = "paper", sau_kernels: tuple[int, ...] = (3, 5, 7, 7),
                 sau_hidden: int = 32):
        super().__init__()
        if num_projectors < 1:
            raise ValueError(f"config key 'distill.num_projectors' is {num_projectors}; it must be >= 1")
        if sau not in SAU_KINDS:
            raise ValueError(f"SAPE sau is {sau!r}; choose one of {SAU_KINDS}")
        self.joints, self.in_size, self.out_size = joints, tuple(in_size), tuple(out_size)
        self.sau_kind = sau
        self.projectors = nn.ModuleList(
            Projector(projector, joints, in_size, out_size) for _ in range(num_projectors)
        )
        self.sau: nn.Module | None = None
        if sau == "paper":
            self.sau = SAU(joints, num_projectors, tuple(sau_kernels), sau_hidden)
        elif sau == "official":
            self.sau = OfficialSAU(joints, num_projectors)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor | None]:
        """Project and fuse.

        Args:
            f: student feature F^s [B, J, h, w].

        Returns:
            (F_out [B, J, H', W'], weights [B, K, J] (paper) / [B, K+1, J] (official) / None).
        """
        if tuple(f.shape[1:]) != (self.joints, *self.in_size):
            raise ValueError(f"SAPE expects student features [B, {self.joints}, {self.in_size[0]}, "
                             f"{self.in_size[1]}], got {tuple(f.shape)}")
        outs = torch.stack([p(f) for p in self.projectors], dim=1)  # [B, K, J, H', W']
        if self.sau is None:
            return outs.mean(dim=1), None
        if self.sau_kind == "official":
            outs = torch.cat([outs, outs.mean(dim=1, keepdim=True)], dim=1)  # [B, K+1, J, H', W']
        weights = self.sau(f)  # [B, K(+1), J]
        fused = torch.einsum("bkj,bkjhw->bjhw", weights.to(outs.dtype), outs)  # [B, J, H', W']  (Eq. 4)
        return fused, weights


def feature_cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 5: 1 - cos(flatten(F_out), flatten(F^t)), averaged over the batch (in float32).

    Args:
        student: aligned student feature [B, ...].
        teacher: teacher feature with the same number of elements per sample.

    Returns:
        Scalar loss in [0, 2].
    """
    s = student.float().reshape(student.shape[0], -1)  # [B, J*H'*W']
    t = teacher.float().reshape(teacher.shape[0], -1)
    if s.shape != t.shape:
        raise ValueError(f"feature loss: aligned student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    # cos = <s, t> / (|s| |t|), written out: the same values as F.cosine_similarity, ~3x cheaper on CPU
    cos = (s * t).sum(dim=1) / (s.norm(dim=1).clamp_min(1e-8) * t.norm(dim=1).clamp_min(1e-8))  # [B]
    return (1.0 - cos).mean()
