"""The HTTP API, the web page and the monitoring routes (FastAPI).

Routes: `POST /v1/detect`, `POST /v1/classify`, `GET /v1/model`,
`GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /monitoring`, `GET /`
(the page, `static/`), `GET /docs` (Swagger UI, its assets served from the
`fastapi-swagger` package: nothing comes from a CDN). Every error is JSON
`{"error": message, "reason": snake_case, "request_id": id}`, counted on
`/metrics` by route, status and reason.
"""

import asyncio
import importlib.util
import json
import logging
import os
import time
import uuid
from typing import Optional

from fastapi import FastAPI
from fastapi import Query
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from detector.predict import images as images_lib
from detector.serve import batcher as batcher_lib
from detector.serve import monitoring_page
from detector.serve import service as service_lib
from detector.serve import uploads

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
access_log = logging.getLogger('detector.serve.access')
log = logging.getLogger('detector.serve')

_IMAGE_BODY = {'requestBody': {'required': True, 'content': {
    'image/*': {'schema': {'type': 'string', 'format': 'binary'}},
    'application/octet-stream': {'schema': {'type': 'string',
                                            'format': 'binary'}},
    'multipart/form-data': {'schema': {
        'type': 'object', 'required': [uploads.FIELD],
        'properties': {uploads.FIELD: {'type': 'string',
                                       'format': 'binary'}}}}}}}


def _swagger_assets() -> Optional[str]:
  spec = importlib.util.find_spec('fastapi_swagger')
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], 'resources')


def _error(request: Request, status: int, reason: str, message: str,
           headers=None) -> JSONResponse:
  request.state.reason = reason
  return JSONResponse(
      {'error': message, 'reason': reason,
       'request_id': getattr(request.state, 'request_id', '')},
      status_code=status, headers=headers)


def create_app(service: service_lib.Service) -> FastAPI:
  """The app serving `service` (its warm-up is started by `lifespan`)."""
  info = service.info
  settings = service.settings
  metrics = service.metrics
  app = FastAPI(
      title='detector', version='1',
      description=f'{info.task} with {service.name} ({info.format}, step '
                  f'{info.step}). The page is at /, metrics at /metrics.',
      docs_url=None, redoc_url=None)
  app.mount('/static', StaticFiles(directory=STATIC), name='static')
  swagger = _swagger_assets()
  if swagger:
    app.mount('/docs-assets', StaticFiles(directory=swagger), name='docs')

  @app.get('/docs', include_in_schema=False)
  def docs():
    if not swagger:
      return HTMLResponse('Install fastapi-swagger for the API docs; the '
                          'schema is at /openapi.json.', status_code=404)
    return get_swagger_ui_html(
        openapi_url='/openapi.json', title='detector API',
        swagger_js_url='/docs-assets/swagger-ui-bundle.js',
        swagger_css_url='/docs-assets/swagger-ui.css',
        swagger_favicon_url='/docs-assets/favicon-32x32.png')

  # --- every request: id, metrics, one JSON log line -----------------------
  @app.middleware('http')
  async def observe(request: Request, call_next):
    start = time.perf_counter()
    request.state.request_id = (request.headers.get('x-request-id', '')[:64]
                                or uuid.uuid4().hex[:16])
    request.state.reason = None
    request.state.detections = None
    try:
      response = await call_next(request)
    except Exception:  # pylint: disable=broad-except
      log.exception('Request %s failed', request.state.request_id)
      response = _error(request, 500, 'internal', 'internal error; the '
                        'server log has the details')
    seconds = time.perf_counter() - start
    route = request.scope.get('route')
    route = getattr(route, 'path', None) or 'unmatched'
    status = response.status_code
    if route.startswith('/v1/'):
      metrics.requests.labels(route=route, status=str(status)).inc()
      if status >= 400:
        metrics.errors.labels(route=route, status=str(status),
                              reason=request.state.reason or 'http').inc()
      if status == 200:
        metrics.latency.labels(stage='total').observe(seconds)
    response.headers['X-Request-ID'] = request.state.request_id
    line = {'request_id': request.state.request_id, 'method': request.method,
            'route': route, 'status': status,
            'latency_ms': round(seconds * 1000, 2)}
    if request.state.detections is not None:
      line['detections'] = request.state.detections
    if request.state.reason:
      line['reason'] = request.state.reason
    access_log.info(json.dumps(line))
    return response

  @app.exception_handler(uploads.UploadError)
  async def upload_error(request: Request, e: uploads.UploadError):
    return _error(request, e.status, e.reason, str(e), e.headers)

  @app.exception_handler(RequestValidationError)
  async def invalid(request: Request, e: RequestValidationError):
    problems = []
    for err in e.errors():
      field = '.'.join(str(p) for p in err.get('loc', ())[1:]) or 'request'
      problems.append(f'{field}: {err.get("msg")} (got '
                      f'{err.get("input")!r})')
    return _error(request, 422, 'invalid_parameter', '; '.join(problems))

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException):
    reason = {404: 'not_found', 405: 'method_not_allowed'}.get(
        e.status_code, 'http')
    message = (f'no route {request.method} {request.url.path}'
               if e.status_code in (404, 405) else str(e.detail))
    return _error(request, e.status_code, reason, message)

  # --- the model ------------------------------------------------------------
  async def _submit(request: Request):
    """The request's image, decoded and prepared, queued for the model.
    Returns (image, prepared, job, {stage: seconds})."""
    # While draining, uvicorn accepts no new connection; a request that
    # reached the server is in flight and is answered.
    if not service.ready.is_set():
      raise uploads.UploadError(503, 'not_ready', 'the model is still '
                                'warming up', {'Retry-After': '1'})
    body = await uploads.read_body(request, settings.max_upload_bytes)
    data = uploads.image_bytes(body, request.headers.get('content-type', ''))
    t_read = time.perf_counter()
    service.arriving += 1  # The event loop's thread alone changes it.
    try:
      image = await run_in_threadpool(
          images_lib.decode, data, 'the upload', settings.max_pixels)
      t_decode = time.perf_counter()
      prepared = await run_in_threadpool(service.predictor.prepare, image)
      t_prep = time.perf_counter()
      job = service.submit(prepared)
    except images_lib.ImageError as e:
      status = 413 if e.reason == 'too_many_pixels' else 400
      raise uploads.UploadError(status, e.reason, str(e)) from None
    except batcher_lib.QueueFull:
      raise uploads.UploadError(
          503, 'queue_full', f'{settings.max_queue} images are already '
          'waiting; retry shortly', {'Retry-After': '1'}) from None
    except batcher_lib.Stopped:
      raise uploads.UploadError(503, 'shutting_down', 'the server is '
                                'stopping', {'Retry-After': '1'}) from None
    finally:
      service.arriving -= 1
    return image, prepared, job, {'decode': t_decode - t_read,
                                  'preprocess': t_prep - t_decode}

  def _detections_json(request, prediction, size, score_threshold,
                       max_detections):
    """The detections returned, counted on /metrics on the way."""
    width, height = size
    served = service_lib.filtered(prediction, score_threshold, max_detections)
    metrics.detections.observe(len(served.scores))
    out = []
    for box, score, cls, name in zip(served.boxes, served.scores,
                                     served.class_ids, served.class_names):
      metrics.scores.observe(float(score))
      metrics.areas.observe(float(
          (box[2] - box[0]) * (box[3] - box[1]) / max(width * height, 1)))
      metrics.classes.labels(class_name=name).inc()
      out.append({'box_xyxy': [round(float(v), 3) for v in box],
                  'score': round(float(score), 6), 'class_id': int(cls),
                  'class_name': name})
    request.state.detections = len(out)
    return out

  async def _predict(request: Request, task: str, score_threshold: float,
                     max_detections: Optional[int], top_k: int) -> dict:
    start = time.perf_counter()
    if info.task != task:
      other = '/v1/classify' if info.task == 'classification' else '/v1/detect'
      raise uploads.UploadError(400, 'wrong_task', f'this model is a '
                                f'{info.task} model: POST to {other}')
    image, prepared, job, timing = await _submit(request)
    left = settings.request_timeout_s - (time.perf_counter() - start)
    try:
      output = await asyncio.wait_for(asyncio.wrap_future(job.future),
                                      max(left, 0.001))
    except asyncio.TimeoutError:
      raise uploads.UploadError(
          504, 'timeout', f'no answer within {settings.request_timeout_s} s '
          f'({service.batcher.depth()} images queued)') from None
    height, width = image.shape[:2]
    prediction = service.predictor.result('upload', (height, width), prepared,
                                          output, top_k=top_k)
    service.observe(prediction, image)
    timing.update(queue=job.started_at - job.queued_at,
                  model=job.batch_seconds)
    metrics.width.observe(width)
    metrics.height.observe(height)
    answer = {'request_id': request.state.request_id,
              'model': {'name': service.name, 'step': info.step,
                        'format': info.format},
              'image': {'width': width, 'height': height}}
    if task == 'detection':
      answer['detections'] = _detections_json(
          request, prediction, (width, height), score_threshold,
          max_detections)
    else:
      metrics.classes.labels(class_name=prediction.class_names[0]).inc()
      answer['top_k'] = [
          {'class_id': int(c), 'class_name': n,
           'probability': round(float(p), 6)}
          for c, n, p in zip(prediction.class_ids, prediction.class_names,
                             prediction.probabilities)]
    for stage, seconds in timing.items():
      metrics.latency.labels(stage=stage).observe(seconds)
    timing['total'] = time.perf_counter() - start
    answer['timing_ms'] = {k: round(v * 1000, 3) for k, v in timing.items()}
    return answer

  threshold = Query(0.0, ge=0.0, le=1.0,
                    description='Keep detections scoring at least this.')
  most = Query(None, ge=0, description='Keep at most this many detections.')

  @app.post('/v1/detect', openapi_extra=_IMAGE_BODY)
  async def detect(request: Request, score_threshold: float = threshold,
                   max_detections: Optional[int] = most):
    """Detections on one image: boxes `[x0, y0, x1, y1]` in its pixels."""
    return await _predict(request, 'detection', score_threshold,
                          max_detections, 0)

  @app.post('/v1/classify', openapi_extra=_IMAGE_BODY)
  async def classify(request: Request,
                     top_k: int = Query(5, ge=1, le=1000)):
    """The top-k classes of one image, with probabilities."""
    return await _predict(request, 'classification', 0.0, None,
                          min(top_k, len(info.class_names)))

  @app.get('/v1/model')
  def model():
    """What is served: name, task, format, step, classes, input, limits."""
    return {'name': service.name, 'task': info.task, 'format': info.format,
            'step': info.step, 'source': info.source, 'sha256': service.sha256,
            'class_names': list(info.class_names),
            'input_size': list(info.input_size),
            'max_detections': info.max_detections,
            'preprocessing': info.preprocessing,
            'max_batch': settings.max_batch,
            'monitoring': service.reference is not None,
            'limits': {'max_upload_bytes': settings.max_upload_bytes,
                       'max_pixels': settings.max_pixels,
                       'request_timeout_s': settings.request_timeout_s,
                       'max_queue': settings.max_queue}}

  # --- health, metrics, pages ----------------------------------------------
  @app.get('/healthz')
  def healthz():
    return {'status': 'alive'}

  @app.get('/readyz')
  def readyz():
    if service.draining:
      return JSONResponse({'status': 'stopping'}, status_code=503)
    if not service.ready.is_set():
      return JSONResponse({'status': 'warming up'}, status_code=503)
    return {'status': 'ready'}

  @app.get('/metrics', include_in_schema=False)
  def prometheus_metrics():
    metrics.queue_depth.set(service.batcher.depth())
    service.update_drift()
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)

  @app.get('/monitoring', include_in_schema=False,
           response_class=HTMLResponse)
  def monitoring():
    return monitoring_page.render(service)

  @app.get('/', include_in_schema=False)
  def index():
    return FileResponse(os.path.join(STATIC, 'index.html'))

  return app
