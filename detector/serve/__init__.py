"""The detection service: `python -m detector.serve --model=PATH`.

  service   the model behind the API: dynamic batching (`batcher`), warm-up,
            the drift window and the canary (`detector.monitoring`);
  app       the FastAPI routes, the web page (`static/`), `/metrics`
            (`metrics`), `/monitoring` (`monitoring_page`);
  uploads   the request body to image bytes, in memory, within limits.

Prediction itself is `detector.load`'s: the server adds no model logic.
"""
