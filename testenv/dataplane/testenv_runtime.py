"""The MLServer runtime of the data-plane harness: MLServer's scikit-learn runtime, plus
fault injection and metrics that exist from the start.

crates/testenv/src/dataplane.rs writes this file into every model's folder and names
`testenv_runtime.TestenvSKLearnModel` as the model's `implementation`, with the faults of the
InferenceService's annotations in `parameters.extra`:

- `error_share` (0 to 1, annotation `testenv.iter8.tools/error-share`): that share of
  inference requests is answered with HTTP 500 (a failing model; not 503, which Istio's
  default retry policy would retry). Deterministic, not random: request n (counting from 1)
  fails when floor(n * share) > floor((n - 1) * share), so any first n requests hold
  floor(n * share) failures, and with share 0.5 exactly every second request fails.
- `delay_ms` (0 or more, annotation `testenv.iter8.tools/delay-ms`): every inference
  request is answered that much later (a failing one too).
- `fails_to_load` (crates/testenv/src/pods.rs, `FAILING_STORAGE_URI`): `load` returns False, as
  a model whose artifact is unusable. MLServer keeps running (its server answers) but the
  model never becomes ready: `GET /v2/models/<name>/ready` answers 400, so the harness never
  marks the pod's model ready.

The failure is raised inside MLServer's inference handler, so MLServer counts it as a failed
inference (`model_infer_request_failure_total`) and its REST middleware as a response with
status code 500 (`rest_server_requests_total{status_code="500"}`), as a real failing model.

MLServer creates the series of `model_infer_request_{success,failure,duration}` for a model
only on its first request, so a Prometheus scrape before the first request sees nothing and
`increase()` over a window misses the first scrape's requests. Once the model is loaded this
runtime creates them, at 0, with the labels MLServer's handler uses (`version` is None when
the request names no version, which is how the data plane's clients ask).
"""

import asyncio
import logging
import math

from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_sklearn import SKLearnModel

logger = logging.getLogger("testenv_runtime")

# The names MLServer 1.7.1's DataPlane handler registers (mlserver/handlers/dataplane.py).
_INFER_METRICS = (
    "model_infer_request_success",
    "model_infer_request_failure",
    "model_infer_request_duration",
)


class InjectedFault(MLServerError):
    def __init__(self, n: int):
        super().__init__(f"testenv: injected fault (request {n})", status_code=500)


class TestenvSKLearnModel(SKLearnModel):
    async def load(self) -> bool:
        extra = {}
        if self.settings.parameters is not None and self.settings.parameters.extra:
            extra = self.settings.parameters.extra
        self._error_share = min(max(float(extra.get("error_share", 0)), 0.0), 1.0)
        self._delay = max(float(extra.get("delay_ms", 0)), 0.0) / 1000.0
        self._requests = 0
        if extra.get("fails_to_load"):
            logger.error("testenv: model %s fails to load (fails_to_load)", self.name)
            return False
        ready = await super().load()
        self._create_series()
        return ready

    def _create_series(self) -> None:
        # The handler's metrics live in prometheus_client's default registry; it keeps them by
        # name in a private map (no public lookup). Without it the series still appear, late.
        from prometheus_client import REGISTRY

        collectors = getattr(REGISTRY, "_names_to_collectors", {})
        for name in _INFER_METRICS:
            metric = collectors.get(name)
            if metric is None:
                logger.warning("testenv: no metric %s to create series of", name)
                continue
            metric.labels(model=self.name, version=None)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # One event loop (parallel_workers 0): the counter needs no lock.
        self._requests += 1
        n = self._requests
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        share = self._error_share
        if math.floor(n * share) > math.floor((n - 1) * share):
            raise InjectedFault(n)
        return await super().predict(payload)
