"""The service's Prometheus metrics, on a registry of its own.

Names and labels are the contract of `deploy/alerts.yml` and the README's
table; every metric is prefixed `detector_`.
"""

import prometheus_client as prom

# Seconds: from a fraction of a millisecond (decode of a small PNG) to the
# request time limit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                   0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
PIXEL_BUCKETS = (64, 128, 256, 320, 480, 640, 800, 1024, 1280, 1920, 2560,
                 3840, 5120, 7680)
COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
AREA_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0)
STAGES = ('decode', 'preprocess', 'queue', 'model', 'total')


class Metrics:
  """Every metric of one service (one registry: tests can run several)."""

  def __init__(self):
    r = self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter(
        'detector_requests', 'Requests to the /v1 API.', ['route', 'status'],
        registry=r)
    self.errors = prom.Counter(
        'detector_request_errors', 'Failed requests, by reason.',
        ['route', 'status', 'reason'], registry=r)
    self.latency = prom.Histogram(
        'detector_latency_seconds', 'Time per request in each stage.',
        ['stage'], buckets=LATENCY_BUCKETS, registry=r)
    self.queue_depth = prom.Gauge(
        'detector_queue_depth', 'Images waiting for the model.', registry=r)
    self.batch_size = prom.Histogram(
        'detector_batch_size', 'Images per model call.',
        buckets=BATCH_BUCKETS, registry=r)
    self.width = prom.Histogram(
        'detector_input_width_pixels', 'Width of the images sent.',
        buckets=PIXEL_BUCKETS, registry=r)
    self.height = prom.Histogram(
        'detector_input_height_pixels', 'Height of the images sent.',
        buckets=PIXEL_BUCKETS, registry=r)
    self.detections = prom.Histogram(
        'detector_detections_per_image', 'Detections returned per image.',
        buckets=COUNT_BUCKETS, registry=r)
    self.scores = prom.Histogram(
        'detector_detection_score', 'Scores of the detections returned.',
        buckets=SCORE_BUCKETS, registry=r)
    self.areas = prom.Histogram(
        'detector_box_area_fraction',
        'Box area / image area of the detections returned.',
        buckets=AREA_BUCKETS, registry=r)
    self.classes = prom.Counter(
        'detector_detections_by_class',
        'Detections (top-1 classes of a classifier) returned, per class.',
        ['class_name'], registry=r)
    self.model_info = prom.Gauge(
        'detector_model_info', 'The model served (always 1).',
        ['name', 'step', 'format', 'sha256'], registry=r)
    self.ready = prom.Gauge(
        'detector_ready', '1 once the model is loaded and warmed.', registry=r)
    self.psi = prom.Gauge(
        'detector_drift_psi', 'Population stability index of a signal of '
        'recent traffic against the reference (NaN until enough images).',
        ['signal'], registry=r)
    self.window = prom.Gauge(
        'detector_drift_window_images', 'Images in the drift window.',
        registry=r)
    self.canary_ok = prom.Gauge(
        'detector_canary_ok', '1 when the canary images gave the recorded '
        'outputs at the last check, 0 when not.', registry=r)
    self.canary_runs = prom.Counter(
        'detector_canary_runs', 'Canary checks, by result.', ['result'],
        registry=r)

  def render(self):
    """(body, content type) of the text exposition format."""
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
