"""An uploaded image, from the request body to bytes, all in memory.

The image comes as the raw body (Content-Type image/* or
application/octet-stream, or none) or as the field `image` of a
multipart/form-data body. The body is read up to the byte limit and never
written to disk: Starlette's form parser spools large parts to temporary
files, so multipart bodies are parsed here with python-multipart's
streaming parser, into memory.
"""

from typing import Dict, List

import python_multipart
from python_multipart.multipart import parse_options_header
from python_multipart.exceptions import MultipartParseError

FIELD = 'image'


class UploadError(Exception):
  """A request the server rejects; `status`, `reason`, and the message."""

  def __init__(self, status: int, reason: str, message: str,
               headers: Dict[str, str] = None):
    super().__init__(message)
    self.status = status
    self.reason = reason
    self.headers = headers or {}


async def read_body(request, limit: int) -> bytes:
  """The request body, refused (413) as soon as it passes `limit` bytes."""
  declared = request.headers.get('content-length')
  if declared and declared.isdigit() and int(declared) > limit:
    raise UploadError(413, 'upload_too_large', f'the upload is {declared} '
                      f'bytes; the limit is {limit}')
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise UploadError(413, 'upload_too_large',
                        f'the upload is over the limit of {limit} bytes')
    chunks.append(chunk)
  return b''.join(chunks)


def _multipart_parts(body: bytes, boundary: bytes) -> List[dict]:
  """[{'name': field name, 'headers': {...}, 'data': bytes}] of a body."""
  parts, state = [], {}

  def on_part_begin():
    state['part'] = {'headers': {}, 'data': []}
    state['field'], state['value'] = [], []

  def on_header_field(data, start, end):
    state['field'].append(data[start:end])

  def on_header_value(data, start, end):
    state['value'].append(data[start:end])

  def on_header_end():
    key = b''.join(state['field']).decode('latin-1').lower()
    state['part']['headers'][key] = b''.join(state['value'])
    state['field'], state['value'] = [], []

  def on_part_data(data, start, end):
    state['part']['data'].append(data[start:end])

  def on_part_end():
    part = state.pop('part')
    _, options = parse_options_header(
        part['headers'].get('content-disposition', b''))
    parts.append({'name': options.get(b'name', b'').decode('utf-8', 'replace'),
                  'content_type': part['headers'].get(
                      'content-type', b'').decode('latin-1'),
                  'data': b''.join(part['data'])})

  parser = python_multipart.MultipartParser(boundary, {
      'on_part_begin': on_part_begin, 'on_header_field': on_header_field,
      'on_header_value': on_header_value, 'on_header_end': on_header_end,
      'on_part_data': on_part_data, 'on_part_end': on_part_end})
  try:
    parser.write(body)
    parser.finalize()
  except MultipartParseError as e:
    raise UploadError(400, 'bad_multipart',
                      f'the multipart/form-data body cannot be parsed ({e})'
                      ) from None
  return parts


def image_bytes(body: bytes, content_type: str) -> bytes:
  """The image's bytes from a body of `content_type` (see the module)."""
  kind, options = parse_options_header(content_type or '')
  kind = kind.decode('latin-1').lower()
  if kind == 'multipart/form-data':
    boundary = options.get(b'boundary')
    if not boundary:
      raise UploadError(400, 'bad_multipart', 'multipart/form-data without a '
                        'boundary in its Content-Type')
    parts = _multipart_parts(body, boundary)
    found = [p for p in parts if p['name'] == FIELD]
    if not found:
      names = sorted({p['name'] for p in parts}) or ['none']
      raise UploadError(400, 'missing_field', f'no form field {FIELD!r} '
                        f'(fields sent: {", ".join(names)}); send the image '
                        f'as the field {FIELD!r} or as the raw body')
    return found[0]['data']
  if kind and not (kind.startswith('image/')
                   or kind == 'application/octet-stream'):
    raise UploadError(415, 'unsupported_media_type',
                      f'Content-Type {kind} is not an image; send image/*, '
                      'application/octet-stream or multipart/form-data with '
                      f'the field {FIELD!r}')
  return body
