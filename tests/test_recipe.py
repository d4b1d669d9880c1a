"""The bundled model's recipe (recipes/default_model.sh) runs end to end at tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REFERENCE_GROUPS, SpectrogramSettings
from pipeline.model.bundle import load_bundle

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default_model.sh"


@pytest.mark.slow
@pytest.mark.realdata
def test_the_default_model_recipe_runs_at_tiny_settings(real_data, tmp_path):
    weights = RECIPE.parents[2] / "shared" / "data" / "reference_models" / "25_05_21_12_12_25_classif_cnn8_hnm1_weights.npy"
    if not weights.is_file():
        pytest.skip(f"the reference cnn8 the recipe starts from is not at {weights.parent} (see ../shared/data/README.md)")
    env = {**os.environ, "PYTHON": sys.executable, "MINUTES": "0.5", "EPOCHS": "1", "SETS": "annotated"}
    done = subprocess.run(["bash", str(RECIPE), str(tmp_path / "work"), str(tmp_path / "model"), "--hnm", "0",
                           "--workers", "1"], env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = load_bundle(tmp_path / "model")
    assert bundle.architecture == "hybrid_cnn_xgboost" and bundle.classes == list(REFERENCE_GROUPS)
    assert "CC BY-NC 4.0" in bundle.licence  # batdetect2's examples: the model inherits their terms
    assert "research use only" in bundle.licence  # and the reference cnn8's, its starting point
    assert bundle.manifest["training"]["parent"]["architecture"] == "cnn8"
    assert bundle.fingerprint == SpectrogramSettings().fingerprint()  # default cubes fit the default model
    simulated = (tmp_path / "work" / "audio" / "sim" / "simulation.json").read_text()
    assert "GPL-3" in simulated  # the Tadarida backgrounds' licence, recorded by the simulator
