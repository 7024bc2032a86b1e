"""A procedural two-view mammography phantom (synthetic; no patient data).

Why: the paper's data are private and the public mammography sets are large downloads. The phantom keeps the
property the analysis is about, two projections of one 3D breast that show the same lesion from two angles,
and is cheap enough to train on a CPU.

How one case is built (all in one batched torch pass, deterministic from ``seed``):

1. Geometry. A compressed breast in a box x ∈ [0, 1] (chest wall → nipple), y ∈ [-½, ½] (medial-lateral),
   z ∈ [-¼, ¼] (cranio-caudal, the compression axis of the CC view): an elliptical outline of random length
   and width in the x-y plane whose thickness tapers towards the nipple.
2. Fibroglandular texture. A Gaussian random field with a power-law spectrum (|f|^-β, β = 3, the exponent
   measured on real mammograms) is thresholded softly at a per-case quantile, so the glandular fraction
   (the breast density) varies from case to case (uniform in ``density``). Fat attenuates 0.5, gland 1.0.
3. Pectoral muscle. A wedge at the chest wall, high on the lateral side, bounded by a plane that contains
   the MLO projection direction: it projects to the triangular muscle of an MLO image and to a faint band
   at the chest wall in CC.
4. Lesions. Malignant cases carry a spiculated mass (an irregular sphere with thin radiating spicules), a
   cluster of calcifications (tiny, very dense voxels), or both; a fraction of benign cases carry a smooth,
   well-circumscribed round mass. Lesion contrast scales with ``1 - difficulty``.
5. Visibility per view. Independently in each view, a lesion is occult with probability ``occult`` (as when
   dense tissue or the projection angle hides it in one view only): each view then carries information the
   other lacks, so a model that uses both views can beat either alone.
6. Projections. Projection is linear, so the lesion-free volume and the lesion are projected apart and the
   lesion is added to each view's image times its visibility in that view. CC: line integral along z. MLO:
   line integral along the oblique direction (0, sin θ, cos θ), θ ≈ 45° (jittered per case), by bilinear
   sampling along rays. ``mlo_gain`` scales the MLO lesion, to match the two views' difficulty where they
   differ; at the reproduction's setting (48×48, difficulty 0.25) 1.0 matched them: single-view ResNet-22
   models reached test AUC 0.837 (CC) and 0.835 (MLO), seed 0, 14 epochs.
7. Detector. Images are scaled to about [0, 1] and get additive Gaussian noise (std grows with difficulty).

Generation runs on one intra-op thread whatever the caller's setting: multi-threaded reductions sum in a
different order, and the images must not depend on the machine's thread count. Images are cached on disk as
float16 under ``root/phantom/<key>.npz``, where ``key`` hashes every parameter and the generator's version.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analyses.datasets.common import TwoViewData, TwoViewSplits, stratified_split

CHUNK = 128  # cases generated per batch; case i depends only on (seed, i // CHUNK), never on n
VERSION = 3  # of the generator: 2 added per-view occlusion, the MLO gain and one-thread generation; 3 the CC
# gain, per-view noise and MLO's own occult chance (their defaults give version 2's images)
DEFAULT_ROOT = Path(os.environ.get("DYNAMICS_DATA", "data"))


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that determines the phantom images (all of it goes into the cache key)."""

    n: int = 3000
    size: int = 64
    seed: int = 0
    prevalence: float = 0.5       # fraction of malignant cases
    benign_mass: float = 0.4      # fraction of benign cases with a smooth round mass
    difficulty: float = 0.5       # 0 easy … 1 hard: lowers lesion contrast, raises noise
    density: tuple[float, float] = (0.1, 0.6)
    mlo_angle: float = 45.0
    occult: float = 0.25          # chance, per view and independently, that a lesion is invisible in that view
    mlo_gain: float = 1.0         # MLO lesion contrast relative to CC (matches the views' difficulty)
    cc_gain: float = 1.0          # CC lesion contrast (v3: > 1, the conspicuous, fast view)
    noise_cc: float = 1.0         # detector noise of each view, times the difficulty's noise
    noise_mlo: float = 1.0
    occult_mlo: float | None = None  # MLO's own occult chance (None: ``occult`` for both views)

    def __post_init__(self) -> None:
        for name in ("prevalence", "benign_mass", "difficulty", "occult", "occult_mlo"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PhantomConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.n < 1 or self.size < 16:
            raise ValueError(f"PhantomConfig needs n >= 1 and size >= 16, got n={self.n}, size={self.size}")

    def key(self) -> str:
        blob = json.dumps({"v": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel-centre coordinates, shape (Z, Y, X) each: x∈[0,1], y∈[-½,½], z∈[-¼,¼], isotropic voxels."""
    nz = size // 2
    x = (torch.arange(size) + 0.5) / size
    y = (torch.arange(size) + 0.5) / size - 0.5
    z = (torch.arange(nz) + 0.5) / size - 0.25
    return torch.meshgrid(z, y, x, indexing="ij")


def _texture(b: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero-mean, unit-variance power-law (β = 3) Gaussian random fields, shape (b, Z, Y, X)."""
    nz = size // 2
    fz = torch.fft.fftfreq(nz)[:, None, None] * (nz / size)
    fy = torch.fft.fftfreq(size)[None, :, None]
    fx = torch.fft.rfftfreq(size)[None, None, :]
    f = torch.sqrt(fx ** 2 + fy ** 2 + fz ** 2).clamp_min(1.0 / size)
    amp = f ** (-1.5)
    noise = torch.randn(b, nz, size, size, generator=g)
    field = torch.fft.irfftn(torch.fft.rfftn(noise, dim=(1, 2, 3)) * amp, s=(nz, size, size), dim=(1, 2, 3))
    field = field - field.mean(dim=(1, 2, 3), keepdim=True)
    return field / field.std(dim=(1, 2, 3), keepdim=True)


def _splat(vol: torch.Tensor, pts: torch.Tensor, val: torch.Tensor, size: int) -> None:
    """Add ``val`` (b, k) at physical points ``pts`` (b, k, 3 as x, y, z) to the nearest voxels of ``vol``."""
    b, nz = vol.shape[0], vol.shape[1]
    ix = (pts[..., 0] * size).long().clamp(0, size - 1)
    iy = ((pts[..., 1] + 0.5) * size).long().clamp(0, size - 1)
    iz = ((pts[..., 2] + 0.25) * size).long().clamp(0, nz - 1)
    bi = torch.arange(b)[:, None].expand_as(ix)
    vol.index_put_((bi, iz, iy, ix), val, accumulate=True)


def _u(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _chunk(cfg: PhantomConfig, index: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate the ``b`` cases of chunk ``index``: CC and MLO images (b, S, S), labels and lesion types."""
    s = cfg.size
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    z, y, x = _grid(s)
    hard = cfg.difficulty

    # 1. breast outline and thickness
    length = _u(g, b, 1, 1, 1, lo=0.75, hi=0.95)
    half_w = _u(g, b, 1, 1, 1, lo=0.36, hi=0.47)
    half_t = _u(g, b, 1, 1, 1, lo=0.16, hi=0.23)
    r2 = (x / length) ** 2 + (y / half_w) ** 2
    taper = torch.sqrt((1 - (x / length) ** 4).clamp_min(0))
    inside = (r2 <= 1) & (z.abs() <= half_t * (0.35 + 0.65 * taper))

    # 2. fibroglandular texture with a per-case density
    field = _texture(b, s, g)
    dens = _u(g, b, lo=cfg.density[0], hi=cfg.density[1])
    # the field is Gaussian with unit variance: its (1 - density) quantile is Φ⁻¹(1 - density)
    thr = (math.sqrt(2) * torch.erfinv(1 - 2 * dens)).view(b, 1, 1, 1)
    gland = torch.sigmoid((field - thr) / 0.15)
    vol = torch.where(inside, 0.5 + 0.5 * gland, torch.zeros(()))

    # 3. pectoral muscle wedge, invariant along the MLO direction
    theta = torch.deg2rad(cfg.mlo_angle + _u(g, b, lo=-5.0, hi=5.0))
    ct, st = torch.cos(theta).view(b, 1, 1, 1), torch.sin(theta).view(b, 1, 1, 1)
    v = y * ct - z * st  # in-plane coordinate of the MLO image (top = high v)
    depth = _u(g, b, 1, 1, 1, lo=0.12, hi=0.25)
    start = _u(g, b, 1, 1, 1, lo=-0.15, hi=0.05)
    vmax = 0.5 * ct + 0.25 * st
    muscle = (x < depth * (v - start) / (vmax - start)) & (z.abs() <= half_t)
    vol = torch.where(muscle, torch.full((), 1.15), vol)

    # 4. lesions
    malignant = torch.rand(b, generator=g) < cfg.prevalence
    kind = torch.rand(b, generator=g)
    has_spic = malignant & (kind < 0.75)
    has_calc = malignant & (kind >= 0.4)
    has_round = (~malignant) & (torch.rand(b, generator=g) < cfg.benign_mass)
    cx = _u(g, b, lo=0.25, hi=0.7)
    cy = (2 * _u(g, b) - 1) * 0.55 * half_w.view(b) * torch.sqrt(1 - (cx / length.view(b)) ** 2)
    cz = (2 * _u(g, b) - 1) * 0.5 * half_t.view(b)
    centre = torch.stack([cx, cy, cz], dim=1)  # (b, 3)
    radius = _u(g, b, lo=0.035, hi=0.06)
    contrast = 0.9 * (1.0 - 0.7 * hard)
    r = radius.view(b, 1)
    pidx, ppts = _patch(centre, int(math.ceil(0.08 * s)) + 1, s)  # voxels near the lesion only (fast)
    d = ppts - centre.view(b, 1, 3)
    dist = d.norm(dim=2)
    # irregular outline for malignant masses (angular bumps), smooth sphere for benign ones
    bump = 1 + 0.25 * torch.sin(7 * torch.atan2(d[..., 1], d[..., 0]) + _u(g, b, 1, hi=6.3))
    spic_mass = torch.sigmoid((r * bump - dist) / (0.004 + 0.01 * hard))
    round_mass = torch.sigmoid((r - dist) / 0.006)
    lesion = contrast * (has_spic.view(b, 1) * spic_mass + has_round.view(b, 1) * round_mass)
    bi = torch.arange(b).view(b, 1).expand_as(pidx[0])
    lesion = lesion * inside.expand(b, -1, -1, -1)[(bi, *pidx)]
    les = torch.zeros_like(vol)  # the lesion alone: projected apart, added per view times its visibility
    les.index_put_((bi, *pidx), lesion, accumulate=True)
    # spicules: 10 thin lines from the mass centre, drawn as points along each line
    k, m = 10, 3 * s // 8
    dirs = torch.randn(b, k, 3, generator=g)
    dirs = dirs / dirs.norm(dim=2, keepdim=True)
    lengths = radius.view(b, 1, 1) * _u(g, b, k, 1, lo=1.8, hi=3.0)
    steps = torch.linspace(0.3, 1.0, m).view(1, 1, m, 1)
    pts = centre.view(b, 1, 1, 3) + dirs.view(b, k, 1, 3) * lengths.view(b, k, 1, 1) * steps
    val = (contrast * 0.8 * has_spic.float()).view(b, 1, 1).expand(b, k, m) / (m / (s / 4))
    _splat(les, pts.reshape(b, k * m, 3), val.reshape(b, k * m), s)
    # calcifications: 6–14 tiny very dense specks within a small cluster
    nc = 14
    offs = torch.randn(b, nc, 3, generator=g) * 0.025
    cpts = centre.view(b, 1, 3) + offs
    keep = (torch.arange(nc).view(1, nc) < torch.randint(6, nc + 1, (b, 1), generator=g)) & has_calc.view(b, 1)
    _splat(les, cpts, keep.float() * 6.0 * (1.0 - 0.6 * hard), s)

    # 5. visibility per view, independently (each view its own occult chance)
    occult = torch.tensor([cfg.occult, cfg.occult if cfg.occult_mlo is None else cfg.occult_mlo])
    seen = (torch.rand(b, 2, generator=g) >= occult).float()
    vis_cc, vis_mlo = cfg.cc_gain * seen[:, 0].view(b, 1, 1), cfg.mlo_gain * seen[:, 1].view(b, 1, 1)

    # 6. projections (linear: background and lesion apart)
    cc = (vol.sum(dim=1) + vis_cc * les.sum(dim=1)) / s  # (b, Y, X), line integral along z
    mlo = _project_oblique(vol, theta, s) + vis_mlo * _project_oblique(les, theta, s)

    # 7. detector: scale to about [0, 1], add noise
    noise = 0.02 + 0.06 * hard
    cc = cc / 0.35 + cfg.noise_cc * noise * torch.randn(cc.shape, generator=g)
    mlo = mlo / 0.35 + cfg.noise_mlo * noise * torch.randn(mlo.shape, generator=g)
    lesion_kind = has_spic.long() + 2 * has_calc.long() + 4 * has_round.long()
    visible = (seen[:, 0] > 0).long() + 2 * (seen[:, 1] > 0).long()  # bit 1: seen in CC, bit 2: in MLO
    return (cc.numpy().astype(np.float16), mlo.numpy().astype(np.float16),
            malignant.numpy().astype(np.int64), lesion_kind.numpy(), visible.numpy())


def _project_oblique(vol: torch.Tensor, theta: torch.Tensor, s: int) -> torch.Tensor:
    """Line integrals along (0, sin θ, cos θ) onto an image with rows v ∈ [-½, ½] (top = +v) and columns x.

    The direction has no x component, so each x column is a 2D problem in the (y, z) plane: x becomes the
    channel axis of a 2D ``grid_sample`` (bilinear in y and z), which is much cheaper than a 3D one.
    """
    b = vol.shape[0]
    nt = s // 2 + s // 4
    vs = 0.5 - (torch.arange(s) + 0.5) / s            # row 0 is the top of the image (pectoral side)
    ts = (torch.arange(nt) + 0.5) / nt * 0.75 - 0.375  # ray parameter, covers the whole box
    t, v = torch.meshgrid(ts, vs, indexing="ij")      # (T, V)
    ct, st = torch.cos(theta).view(b, 1, 1), torch.sin(theta).view(b, 1, 1)
    py = v * ct + t * st
    pz = -v * st + t * ct
    grid = torch.stack([py * 2, pz * 4], dim=-1)      # grid_sample order (width=y, height=z), in [-1, 1]
    planes = vol.permute(0, 3, 1, 2)                   # (b, X, Z, Y)
    vals = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (b, X, T, V)
    return vals.sum(dim=2).transpose(1, 2) * (0.75 / nt)


def _patch(centre: torch.Tensor, p: int, s: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Voxel indices (z, y, x), each (b, m), of a cube of half-width ``p`` around ``centre``, and their
    physical coordinates (b, m, 3 as x, y, z). Indices are clamped; clamped duplicates get distance ≫ r."""
    nz = s // 2
    o = torch.arange(-p, p + 1)
    oz, oy, ox = (a.reshape(1, -1) for a in torch.meshgrid(o, o, o, indexing="ij"))
    ix = (centre[:, 0:1] * s).long() + ox
    iy = ((centre[:, 1:2] + 0.5) * s).long() + oy
    iz = ((centre[:, 2:3] + 0.25) * s).long() + oz
    valid = (ix >= 0) & (ix < s) & (iy >= 0) & (iy < s) & (iz >= 0) & (iz < nz)
    pts = torch.stack([(ix + 0.5) / s, (iy + 0.5) / s - 0.5, (iz + 0.5) / s - 0.25], dim=2)
    pts = torch.where(valid.unsqueeze(2), pts, torch.full((), 10.0))
    return (iz.clamp(0, nz - 1), iy.clamp(0, s - 1), ix.clamp(0, s - 1)), pts


def _chunk_one_thread(cfg: PhantomConfig, index: int) -> tuple[np.ndarray, ...]:
    """One chunk on one intra-op thread (restored afterwards): the images never depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _chunk(cfg, index, CHUNK)
    finally:
        torch.set_num_threads(threads)


def generate(cfg: PhantomConfig, workers: int = 1) -> dict[str, np.ndarray]:
    """All ``cfg.n`` cases in memory: ``cc``, ``mlo`` (n, S, S) float16, ``y`` (n,), ``lesion`` bit flags
    (1 spiculated mass, 2 calcifications, 4 benign round mass), ``visible`` (1: the lesion shows in CC, 2: in
    MLO). Each chunk is generated on one thread; ``workers`` > 1 spreads the chunks over processes (the same
    images: a chunk depends only on the seed and its index)."""
    indices = range(-(-cfg.n // CHUNK))  # full chunks: case i never depends on n
    if workers > 1 and len(indices) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        with ProcessPoolExecutor(min(workers, len(indices)), mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_chunk_one_thread, [cfg] * len(indices), indices))
    else:
        parts = [_chunk_one_thread(cfg, i) for i in indices]
    cc, mlo, y, lesion, visible = (np.concatenate(p)[:cfg.n] for p in zip(*parts))
    return {"cc": cc, "mlo": mlo, "y": y, "lesion": lesion, "visible": visible}


def load_arrays(cfg: PhantomConfig, root: str | Path = DEFAULT_ROOT, workers: int | None = None) -> dict[str, np.ndarray]:
    """The cached arrays for ``cfg``, generating and writing them on first use (atomic rename; ``workers``
    processes, default one per CPU core up to 2)."""
    path = Path(root) / "phantom" / f"{cfg.key()}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = generate(cfg, workers=min(2, os.cpu_count() or 1) if workers is None else workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(asdict(cfg), indent=1))
    return arrays


# The two phantoms of the reproduction. v2: the symmetric control (views equally hard, occult independently
# with the same chance). v3: the paper's imbalance between two views of one modality: CC conspicuous (lesion
# contrast x cc_gain, less noise) and so learned fast, MLO fainter and noisier but hiding the lesion on its own
# cases (its own occult chance), so it carries what CC misses. Tuned by pilots (README, Findings).
VARIANTS: dict[str, dict] = {
    "v2": {},
    "v3": dict(cc_gain=2.0, noise_cc=0.5, occult=0.35, mlo_gain=0.95, noise_mlo=1.25, occult_mlo=0.2),
}


def variant(name: str, **kw) -> PhantomConfig:
    """The :data:`VARIANTS` preset ``name`` with ``kw`` (n, size, seed, ...) on top."""
    if name not in VARIANTS:
        raise ValueError(f"unknown phantom variant {name!r}; choose from {sorted(VARIANTS)}")
    return PhantomConfig(**{**VARIANTS[name], **kw})


def split_sizes(n_trainval: int, n_test: int, val_share: float = 0.25) -> tuple[int, tuple[float, float, float]]:
    """Cases to generate and split fractions for ``n_trainval`` train+validation cases (``val_share`` of them
    validation) beside a test split of ``n_test`` cases (a large test set costs generation only)."""
    if n_trainval < 4 or n_test < 0:
        raise ValueError(f"need n_trainval >= 4 and n_test >= 0, got {n_trainval}, {n_test}")
    n = n_trainval + n_test
    return n, ((1 - val_share) * n_trainval / n, val_share * n_trainval / n, n_test / n)


def load(cfg: PhantomConfig | None = None, root: str | Path = DEFAULT_ROOT,
         fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> TwoViewSplits:
    """Phantom splits with views ``cc`` and ``mlo`` as (n, 1, S, S) float32 tensors, stratified by label; the
    split is drawn with the phantom's own seed (each data seed: its own cases and its own split)."""
    cfg = cfg or PhantomConfig()
    a = load_arrays(cfg, root)
    splits = stratified_split(a["y"], fractions, seed=cfg.seed)

    def take(idx: np.ndarray) -> TwoViewData:
        # C order whether the arrays were just generated or read from the cache: a tensor's memory layout
        # steers how randn_like fills it (input noise), so a run must not depend on where its data came from
        views = {v: torch.from_numpy(np.ascontiguousarray(a[v][idx], dtype=np.float32)).unsqueeze(1)
                 for v in ("cc", "mlo")}
        return TwoViewData(views, torch.from_numpy(a["y"][idx]).float(), [f"phantom-{i}" for i in idx])

    train, val, test = (take(i) for i in splits)
    return TwoViewSplits(train, val, test, ("cc", "mlo"), {"dataset": "phantom", **asdict(cfg), "synthetic": True})
