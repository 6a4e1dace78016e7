r"""`python -m detector.serve --model=PATH [--host=127.0.0.1] [--port=8000]`

Serves a model (a training workdir, a weights file or an exported
artefact; anything `detector.load` opens) over HTTP with FastAPI on
uvicorn: `POST /v1/detect` (or `/v1/classify`), the web page at `/`,
`/metrics` for Prometheus, `/monitoring`, `/healthz`, `/readyz`, and the
API docs at `/docs`. The model is compiled for every batch size and checked
on its canary images before `/readyz` says ready. SIGTERM (or Ctrl-C) stops
taking requests, finishes those in flight and exits 0.
"""

import json
import logging
import signal
import sys
import threading

from absl import app
from absl import flags

from detector import errors
from detector import runtime

flags.DEFINE_string('model', None, 'A training workdir, a weights file or an '
                    'exported artefact.')
flags.DEFINE_string('host', '127.0.0.1', 'The address to listen on (0.0.0.0 '
                    'for every interface).')
flags.DEFINE_integer('port', 8000, 'The port to listen on.')
flags.DEFINE_integer('step', None, 'A workdir\'s checkpoint step (default: '
                     'the latest).')
flags.DEFINE_integer('max_batch', 8, 'The most images per model call.')
flags.DEFINE_float('max_wait_ms', 5.0, 'How long a request waits for others '
                   'to share its model call.')
flags.DEFINE_integer('max_queue', 64, 'Images that may wait for the model; '
                     'beyond, requests get 503 with Retry-After.')
flags.DEFINE_integer('max_upload_bytes', 20 * 2**20, 'The largest upload.')
flags.DEFINE_integer('max_pixels', 40 * 10**6, 'The most pixels an image may '
                     'have (checked before decoding it).')
flags.DEFINE_float('request_timeout_s', 30.0, 'A request not answered by '
                   'then gets 504.')
flags.DEFINE_integer('drift_window', 500, 'Recent images the drift is '
                     'measured on.')
flags.DEFINE_integer('drift_min_images', 100, 'Images the window needs '
                     'before the PSI is reported.')
flags.DEFINE_float('canary_every_s', 300.0, 'Seconds between canary checks '
                   '(0: only at start).')
flags.mark_flags_as_required(['model'])
FLAGS = flags.FLAGS


class _Logs(logging.Formatter):
  """One JSON object per line: access lines are JSON already; other
  records get level, logger, message and their `extra={'fields': {...}}`."""

  def format(self, record):
    if record.name == 'detector.serve.access':
      return record.getMessage()
    message = record.getMessage()
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    return json.dumps({'level': record.levelname.lower(),
                       'logger': record.name, 'message': message,
                       **getattr(record, 'fields', {})})


def _configure_logging():
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_Logs())
  for name in ('detector', 'uvicorn', 'uvicorn.error'):
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  _configure_logging()
  # pylint: disable=g-import-not-at-top
  import contextlib
  import uvicorn
  import detector
  from detector.serve import app as app_lib
  from detector.serve import metrics as metrics_lib
  from detector.serve import service as service_lib
  settings = service_lib.Settings(
      max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
      max_queue=FLAGS.max_queue, max_upload_bytes=FLAGS.max_upload_bytes,
      max_pixels=FLAGS.max_pixels, request_timeout_s=FLAGS.request_timeout_s,
      drift_window=FLAGS.drift_window,
      drift_min_images=FLAGS.drift_min_images,
      canary_every_s=FLAGS.canary_every_s)
  try:
    predictor = detector.load(FLAGS.model, step=FLAGS.step,
                              batch_size=FLAGS.max_batch)
    service = service_lib.Service(predictor, FLAGS.model, settings,
                                  metrics_lib.Metrics())
  except (errors.ConfigError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    threading.Thread(target=_warm, args=(service,), name='warm',
                     daemon=True).start()
    yield
    service.stop()  # After uvicorn has answered every request in flight.

  web = app_lib.create_app(service)
  web.router.lifespan_context = lifespan

  class Server(uvicorn.Server):
    """uvicorn's, except that SIGTERM ends the process with status 0.

    uvicorn drains and then re-raises the signal (status 143); a stop asked
    for by an orchestrator is the normal end of a server's life.
    """

    def handle_exit(self, sig, frame):
      service.draining = True
      if self.should_exit and sig == signal.SIGINT:
        self.force_exit = True
      else:
        self.should_exit = True

  config = uvicorn.Config(
      web, host=FLAGS.host, port=FLAGS.port, access_log=False,
      log_config=None, timeout_graceful_shutdown=int(
          FLAGS.request_timeout_s) + 5)
  Server(config).run()


def _warm(service):
  try:
    service.warm()
    logging.getLogger('detector.serve').info(
        'Ready: %s (%s).', service.name, service.info.format)
    service.canary_loop()
  except Exception:  # pylint: disable=broad-except
    logging.getLogger('detector.serve').exception(
        'Warm-up failed; the server stays unready')


def run():
  """The program: `python -m detector.serve` and `detector-serve`."""
  runtime.run_program(__name__, main)


if __name__ == '__main__':
  run()
