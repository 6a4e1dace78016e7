"""Images from anything a user hands the predictor, as uint8 RGB arrays.

Accepted: a path (any format Pillow reads), a PIL image or a numpy array
([H, W] grey, [H, W, 1|3|4], uint8, uint16 or float in [0, 1]). Photographs
are turned upright as their EXIF orientation says (as labelling tools and
viewers show them); grey, grey+alpha, palette, CMYK, RGBA and 16-bit images
become 8-bit RGB (alpha dropped: a transparent pixel shows its colour, as
in the training data, which has no alpha). A file that cannot be read, is
empty, or holds more pixels than `MAX_PIXELS` (a decompression bomb) raises
`ImageError` naming it.
"""

import io
import os
from typing import Any, Iterator, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from detector import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')
MAX_PIXELS = 128 * 2**20  # Pillow's own default is 89 M; 128 Mpx is 8K x 16K.


class ImageError(errors.ConfigError):
  """An input that is not a readable image; the message names it.

  `reason` says which way it failed, for programs that count failures (the
  server's metrics): 'missing', 'empty', 'not_an_image', 'corrupt_image',
  'too_many_pixels' or 'unsupported_array'.
  """

  def __init__(self, message: str, reason: str = 'not_an_image'):
    super().__init__(message)
    self.reason = reason


def to_rgb(image: Image.Image) -> np.ndarray:
  """A PIL image, upright, as uint8 [H, W, 3]."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    # 16-bit grey: scale the full range to 8 bits (Pillow's convert clips).
    array = np.asarray(image, np.float64)
    top = 65535.0 if array.max(initial=0) > 255 else 255.0
    array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=-1)
  if image.mode == 'F':
    return array_to_rgb(np.asarray(image), 'a float image')
  return np.asarray(image.convert('RGB'), np.uint8)


def array_to_rgb(array: np.ndarray, where: str = 'an array') -> np.ndarray:
  """A numpy image ([H, W] or [H, W, 1|3|4]; uint8, uint16 or float in
  [0, 1]) as uint8 [H, W, 3]."""
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
    raise ImageError(f'{where}: shape {array.shape} is not an image '
                     '([H, W] or [H, W, 1|3|4])', 'unsupported_array')
  if array.dtype == np.uint16:
    array = (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
  elif np.issubdtype(array.dtype, np.floating):
    array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  elif array.dtype != np.uint8:
    raise ImageError(f'{where}: dtype {array.dtype}; expected uint8, uint16 '
                     'or float in [0, 1]', 'unsupported_array')
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.ascontiguousarray(array[..., :3])


def read(path: str) -> np.ndarray:
  """The image file at `path` as uint8 [H, W, 3].

  Raises:
    ImageError: missing, empty, unreadable or too large, naming the file.
  """
  if not os.path.isfile(path):
    raise ImageError(f'{path}: no such file', 'missing')
  if os.path.getsize(path) == 0:
    raise ImageError(f'{path}: the file is empty (0 bytes)', 'empty')
  with open(path, 'rb') as f:
    return _decode(f, path, MAX_PIXELS)


def decode(data: bytes, name: str, max_pixels: int = MAX_PIXELS
           ) -> np.ndarray:
  """Encoded image bytes (any format Pillow reads) as uint8 [H, W, 3],
  decoded in memory.

  Raises:
    ImageError: empty, not an image, corrupt or truncated, or more than
      `max_pixels` pixels (checked from the header, before decoding).
  """
  if not data:
    raise ImageError(f'{name}: empty (0 bytes)', 'empty')
  return _decode(io.BytesIO(data), name, max_pixels)


def _decode(stream, name: str, max_pixels: int) -> np.ndarray:
  try:
    with Image.open(stream) as image:
      w, h = image.size
      if w * h > max_pixels:
        raise ImageError(f'{name}: {w}x{h} pixels is over the limit of '
                         f'{max_pixels} (a decompression bomb?)',
                         'too_many_pixels')
      return to_rgb(image)
  except ImageError:
    raise
  except Image.DecompressionBombError as e:
    raise ImageError(f'{name}: {e} (over the limit of {max_pixels} pixels)',
                     'too_many_pixels') from None
  except UnidentifiedImageError:
    raise ImageError(f'{name}: cannot read the image: not an image (no '
                     'format Pillow reads recognises these bytes)',
                     'not_an_image') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageError(f'{name}: cannot read the image, corrupt or truncated '
                     f'({type(e).__name__}: {str(e)[:200]})',
                     'corrupt_image') from None


def load(item: Any) -> Tuple[str, np.ndarray]:
  """(a name for it, uint8 [H, W, 3]) of a path, PIL image or array."""
  if isinstance(item, (str, os.PathLike)):
    return str(item), read(str(item))
  if isinstance(item, Image.Image):
    return getattr(item, 'filename', '') or '<PIL image>', to_rgb(item)
  if isinstance(item, np.ndarray):
    return '<array>', array_to_rgb(item)
  raise ImageError(f'{type(item).__name__}: expected a path, a PIL image or '
                   'a numpy array')


def expand(inputs: Sequence[str]) -> Iterator[Tuple[str, str]]:
  """(kind, path) of every input: 'image' for image files and the images
  found in folders (recursively, sorted, hidden files skipped), 'video' for
  video files, 'missing' for what does not exist (reported by the caller)."""
  for path in inputs:
    if os.path.isdir(path):
      for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in sorted(files):
          if (not name.startswith('.')
              and name.lower().endswith(IMAGE_EXTENSIONS)):
            yield 'image', os.path.join(root, name)
    elif path.lower().endswith(VIDEO_EXTENSIONS):
      yield 'video', path
    elif os.path.exists(path):
      yield 'image', path
    else:
      yield 'missing', path


def video_frames(path: str, every: int = 1) -> Iterator[Tuple[int, np.ndarray]]:
  """(frame index, uint8 [H, W, 3]) of every `every`-th frame of a video,
  decoded by PyAV (FFmpeg).

  Raises:
    ImageError: the file cannot be opened or decoded, naming it.
  """
  import av  # pylint: disable=g-import-not-at-top
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      for index, frame in enumerate(container.decode(stream)):
        if index % every == 0:
          yield index, frame.to_ndarray(format='rgb24')
  except (av.error.FFmpegError, IndexError, OSError) as e:
    raise ImageError(f'{path}: cannot decode the video ({type(e).__name__}: '
                     f'{str(e)[:200]})') from None

