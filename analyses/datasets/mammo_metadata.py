"""CBIS-DDSM and VinDr-Mammo: parse the published metadata CSVs, pair CC and MLO per breast, load images.

For users who have downloaded either data set (nothing is downloaded here). An *exam* is one breast of one
patient/study; its label is breast-level:

- CBIS-DDSM (``mass_case_description_*.csv``, ``calc_case_description_*.csv``; columns ``patient_id``,
  ``left or right breast``, ``image view``, ``pathology``, ``image file path``): positive if any abnormality
  of the breast is ``MALIGNANT``. The official split comes from the path prefix (``*-Training_`` / ``*-Test_``).
  Image paths are taken relative to ``root``; if the file is not there, the first ``.dcm`` under
  ``root/<first path component>`` (the TCIA download layout) is used.
- VinDr-Mammo (``breast-level_annotations.csv``; columns ``study_id``, ``image_id``, ``laterality``,
  ``view_position``, ``breast_birads``, ``split``): positive if BI-RADS is 4 or 5. Images at
  ``root/images/<study_id>/<image_id>.dicom`` (or ``.png``).

A missing view, a laterality that disagrees between the CSV, the path or the DICOM header, or an unreadable
file raises :class:`ExamError` naming the exam; with ``skip_bad=True`` such exams are skipped and counted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from dynamics.analysis import check_columns

from analyses.datasets.common import TwoViewData, TwoViewSplits, stratified_split
from analyses.datasets.dicom import ImageReadError, dicom_laterality, load_image

VIEWS = ("cc", "mlo")


class ExamError(ValueError):
    """A problem with one exam (breast); the message starts with the exam id."""

    def __init__(self, exam: str, reason: str) -> None:
        super().__init__(f"exam {exam}: {reason}")
        self.exam, self.reason = exam, reason


@dataclass
class Exam:
    """One breast: image files per view, breast-level label, laterality ('L'/'R') and official split."""

    exam_id: str
    laterality: str
    label: int
    split: str
    files: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class ExamSet:
    """Parsed exams plus the ones skipped (exam id → reason)."""

    exams: list[Exam]
    skipped: dict[str, str] = field(default_factory=dict)


def _side(value: str, exam: str) -> str:
    v = str(value).strip().upper()
    if v in ("L", "LEFT"):
        return "L"
    if v in ("R", "RIGHT"):
        return "R"
    raise ExamError(exam, f"unknown laterality {value!r}")


def _finish(exams: dict[str, Exam], skip_bad: bool, skipped: dict[str, str]) -> ExamSet:
    """Check every exam has exactly the two views; raise or skip."""
    good = []
    for exam in exams.values():
        try:
            missing = [v for v in VIEWS if not exam.files.get(v)]
            if missing:
                have = sorted(v for v in exam.files if exam.files[v])
                raise ExamError(exam.exam_id, f"missing {'/'.join(m.upper() for m in missing)} view (has {have})")
            good.append(exam)
        except ExamError as err:
            if not skip_bad:
                raise
            skipped[err.exam] = err.reason
    return ExamSet(good, skipped)


def _norm_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns=lambda c: re.sub(r"[\s_]+", " ", str(c).strip().lower()))


def parse_cbis_ddsm(csv_files: Iterable[str | Path], root: str | Path, *, skip_bad: bool = False) -> ExamSet:
    """CBIS-DDSM case-description CSVs → one :class:`Exam` per breast (abnormalities merged)."""
    root = Path(root)
    exams: dict[str, Exam] = {}
    skipped: dict[str, str] = {}
    for csv in csv_files:
        df = _norm_columns(pd.read_csv(csv))
        check_columns(df, ["patient id", "left or right breast", "image view", "pathology", "image file path"],
                      f"{csv} (a CBIS-DDSM case description CSV)")
        for row in df.itertuples(index=False):
            r = dict(zip(df.columns, row))
            exam_id = f"{r['patient id']}_{str(r['left or right breast']).strip().upper()}"
            try:
                side = _side(r["left or right breast"], exam_id)
                path = str(r["image file path"]).strip()
                top = path.replace("\\", "/").split("/")[0]
                m = re.search(r"_(LEFT|RIGHT)_(CC|MLO)$", top.upper())
                if m and m.group(1)[0] != side:
                    raise ExamError(exam_id, f"laterality mismatch: CSV says {side}, image path {path!r} says {m.group(1)}")
                split = "test" if "-TEST" in top.upper() else "train"
                exam = exams.setdefault(exam_id, Exam(exam_id, side, 0, split))
                view = str(r["image view"]).strip().lower()
                if view not in VIEWS:
                    continue  # other views (e.g. ML) are not part of the CC/MLO pair
                f = _resolve_cbis(root, path)
                if f not in exam.files.setdefault(view, []):
                    exam.files[view].append(f)
                exam.label = max(exam.label, int(str(r["pathology"]).strip().upper() == "MALIGNANT"))
            except ExamError as err:
                if not skip_bad:
                    raise
                skipped[err.exam] = err.reason
                exams.pop(err.exam, None)
    for bad in skipped:
        exams.pop(bad, None)
    return _finish(exams, skip_bad, skipped)


def _resolve_cbis(root: Path, path: str) -> Path:
    direct = root / path
    if direct.is_file():
        return direct
    top = path.replace("\\", "/").split("/")[0]
    for base in (root / top, root / "CBIS-DDSM" / top):
        if base.is_dir():
            found = sorted(base.rglob("*.dcm"))
            if found:
                return found[0]
    return direct  # missing: reported as unreadable when loaded


def parse_vindr(csv_file: str | Path, root: str | Path, *, skip_bad: bool = False) -> ExamSet:
    """VinDr-Mammo ``breast-level_annotations.csv`` → one :class:`Exam` per study and breast."""
    root = Path(root)
    df = _norm_columns(pd.read_csv(csv_file))
    check_columns(df, ["study id", "image id", "laterality", "view position", "breast birads"],
                  f"{csv_file} (a VinDr-Mammo breast-level CSV)")
    exams: dict[str, Exam] = {}
    skipped: dict[str, str] = {}
    for row in df.itertuples(index=False):
        r = dict(zip(df.columns, row))
        exam_id = f"{r['study id']}_{str(r['laterality']).strip().upper()}"
        try:
            side = _side(r["laterality"], exam_id)
            birads = int(re.sub(r"\D", "", str(r["breast birads"])) or 0)
            split = "test" if str(r.get("split", "training")).strip().lower() == "test" else "train"
            exam = exams.setdefault(exam_id, Exam(exam_id, side, 0, split))
            exam.label = max(exam.label, int(birads >= 4))
            view = str(r["view position"]).strip().lower()
            if view not in VIEWS:
                continue
            base = root / "images" / str(r["study id"]) / str(r["image id"])
            f = next((base.with_suffix(s) for s in (".dicom", ".dcm", ".png") if base.with_suffix(s).is_file()),
                     base.with_suffix(".dicom"))
            exam.files.setdefault(view, []).append(f)
        except ExamError as err:
            if not skip_bad:
                raise
            skipped[err.exam] = err.reason
    for bad in skipped:
        exams.pop(bad, None)
    return _finish(exams, skip_bad, skipped)


def load_exam_images(exams: ExamSet, size: int, *, skip_bad: bool = False) -> tuple[dict[str, np.ndarray], list[Exam]]:
    """Read the first CC and MLO image of every exam; check DICOM laterality; returns arrays and kept exams."""
    cc, mlo, kept = [], [], []
    for exam in exams.exams:
        try:
            images = {}
            for view in VIEWS:
                f = exam.files[view][0]
                try:
                    if f.suffix.lower() in (".dcm", ".dicom"):
                        lat = dicom_laterality(f)
                        if lat is not None and lat != exam.laterality:
                            raise ExamError(exam.exam_id, f"laterality mismatch: {view.upper()} file {f} is "
                                                          f"{lat} in its DICOM header, exam is {exam.laterality}")
                    images[view] = load_image(f, size)
                except ImageReadError as err:
                    raise ExamError(exam.exam_id, f"{view.upper()} image unreadable: {err}") from err
            cc.append(images["cc"])
            mlo.append(images["mlo"])
            kept.append(exam)
        except ExamError as err:
            if not skip_bad:
                raise
            exams.skipped[err.exam] = err.reason
    if not kept:
        raise ValueError(f"no usable exams (skipped {len(exams.skipped)}: {dict(list(exams.skipped.items())[:3])})")
    return {"cc": np.stack(cc).astype(np.float32), "mlo": np.stack(mlo).astype(np.float32)}, kept


def find_csvs(dataset: str, root: Path) -> list[Path]:
    """The metadata CSVs of ``dataset`` under ``root`` (searched recursively by their published names)."""
    patterns = {"cbis-ddsm": ["mass_case_description_*.csv", "calc_case_description_*.csv"],
                "vindr-mammo": ["breast-level_annotations.csv"]}[dataset]
    found = sorted({p for pat in patterns for p in root.rglob(pat)})
    if not found:
        raise FileNotFoundError(f"no {dataset} metadata CSV ({' or '.join(patterns)}) under {root}")
    return found


def load_splits(dataset: str, root: str | Path, size: int = 64, *, csv: list[str] | None = None,
                skip_bad: bool = False, val_fraction: float = 0.2, seed: int = 0, cache: bool = True) -> TwoViewSplits:
    """Exams → official train/test split, validation carved from train (stratified); images cached in
    ``root/.dynamics-cache``."""
    root = Path(root)
    files = [Path(c) for c in csv] if csv else find_csvs(dataset, root)
    exams = parse_cbis_ddsm(files, root, skip_bad=skip_bad) if dataset == "cbis-ddsm" else \
        parse_vindr(files[0], root, skip_bad=skip_bad)
    key = hashlib.sha256(json.dumps([dataset, size, skip_bad, [str(f) for f in files],
                                     [e.exam_id for e in exams.exams]]).encode()).hexdigest()[:16]
    cache_file = root / ".dynamics-cache" / f"{key}.npz"
    if cache and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as f:
            arrays = {"cc": f["cc"], "mlo": f["mlo"]}
            kept_ids = set(f["ids"].tolist())
        kept = [e for e in exams.exams if e.exam_id in kept_ids]
    else:
        arrays, kept = load_exam_images(exams, size, skip_bad=skip_bad)
        if cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{key}.{os.getpid()}.tmp.npz")
            np.savez(tmp, ids=np.array([e.exam_id for e in kept]), **arrays)
            os.replace(tmp, cache_file)
    y = np.array([e.label for e in kept], dtype=np.int64)
    is_test = np.array([e.split == "test" for e in kept])
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    tr, va, rest = stratified_split(y[train_idx], (1 - val_fraction, val_fraction, 0.0), seed)
    parts = (train_idx[np.sort(np.concatenate([tr, rest]))], train_idx[va], test_idx)

    def take(idx: np.ndarray) -> TwoViewData:
        views = {v: torch.from_numpy(arrays[v][idx]).unsqueeze(1) for v in VIEWS}
        return TwoViewData(views, torch.from_numpy(y[idx]).float(), [kept[i].exam_id for i in idx])

    info = {"dataset": dataset, "root": str(root), "n_exams": len(kept), "skipped": len(exams.skipped),
            "skipped_exams": exams.skipped, "image_size": size}
    return TwoViewSplits(take(parts[0]), take(parts[1]), take(parts[2]), VIEWS, info)
