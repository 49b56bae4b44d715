"""MLflow pyfunc wrapper of a pumpcast model file ("models from code": MLflow runs this file to build the
model, nothing is unpickled). Input: a DataFrame history (time + the six features); params: {"steps": N}."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class PumpcastPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pumpcast.forecasting import Forecaster

        self.forecaster = Forecaster.load(context.artifacts["model_file"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        steps = int((params or {}).get("steps", self.forecaster.horizon))
        return self.forecaster.predict([model_input], steps)[0]


mlflow.models.set_model(PumpcastPyfunc())
