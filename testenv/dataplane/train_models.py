"""Trains the two tiny scikit-learn models the data-plane tests serve with MLServer.

No download: the iris data set ships inside scikit-learn. Two variants, so a test can tell the
original model (v0) from the promoted one (v1): each folder gets a model.joblib and a
model-settings.json template whose `parameters.version` MLServer echoes back as
`model_version` in every inference response. The test harness fills in the model's name (the
InferenceService's name) when it starts a server.

Usage: python train_models.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier


def main(out: Path) -> None:
    x, y = load_iris(return_X_y=True)
    variants = {
        "v0": LogisticRegression(max_iter=500, random_state=0),
        "v1": DecisionTreeClassifier(max_depth=3, random_state=0),
    }
    for version, model in variants.items():
        model.fit(x, y)
        folder = out / version
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {
            "name": "MODEL_NAME",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": version},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        score = model.score(x, y)
        print(f"trained {version}: {type(model).__name__}, training accuracy {score:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: train_models.py OUT_DIR")
    main(Path(sys.argv[1]))
