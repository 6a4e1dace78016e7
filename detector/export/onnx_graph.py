"""ONNX graph pieces of the `onnx` export: the detector's NMS and top-D
selection, a repair of jax2onnx's N-d max pooling, and one copy of each
weight."""

import hashlib

import numpy as np

from detector import errors


def nms_nodes(n: int, b: int, model_config, input_size):
  """Per-class NMS on N candidates, then the first D kept ones in rank
  order, as `detector.models.detector.postprocess` returns them.

  Inputs (graph values): `candidate_boxes` [b, N, 4] yxyx input pixels,
  `candidate_scores` [b, N], `candidate_classes` [b, N] int32 and
  `nms_scores` [b, C, N] (`detector.export.onnx.nms_scores`: each
  candidate's rank N - i in its own class where it may be kept, else -1).
  onnxruntime's NonMaxSuppression suppresses at IoU > t, as
  `detector.ops.nms`, and visits by the rank scores, which are distinct.

  Returns:
    (nodes, initializers, graph outputs): `base.DETECTION_OUTPUTS`.
  """
  # pylint: disable=g-import-not-at-top
  from onnx import helper
  from onnx import numpy_helper
  from onnx import TensorProto
  d = int(model_config.max_detections)
  k = min(d, n)
  h, w = input_size
  consts = {
      'nms_max': np.asarray([k], np.int64),
      'nms_iou': np.asarray([model_config.nms_iou_threshold], np.float32),
      'nms_score': np.asarray([0.], np.float32),
      'cols_bn': np.asarray([0, 2], np.int64),
      'first': np.asarray([0], np.int64),
      'one_f': np.asarray(1., np.float32),
      'minus_one': np.asarray(-1., np.float32),
      'half': np.asarray(.5, np.float32),
      'rank': (n - np.arange(n)).astype(np.float32),
      'top_k': np.asarray([k], np.int64),
      'last_axis': np.asarray([-1], np.int64),
      'scale': np.asarray([h, w, h, w], np.float32),
  }
  nodes = (_kept_nodes(helper, TensorProto) + _output_nodes(helper, TensorProto)
           + _pad_rows(helper.make_node, consts, d - k))
  value = lambda name, shape: helper.make_tensor_value_info(
      name, TensorProto.FLOAT, shape)
  outputs = [value('detection_boxes', [b, d, 4]),
             value('detection_scores', [b, d]),
             value('detection_classes', [b, d]), value('num_detections', [b])]
  return nodes, [numpy_helper.from_array(v, name)
                 for name, v in consts.items()], outputs


def _kept_nodes(helper, tensor_proto):
  """NMS -> `kept` [b, N] bool, the candidates per-class NMS keeps."""
  make = helper.make_node
  zero = helper.make_tensor('zero', tensor_proto.FLOAT, [1], [0.])
  return [
      # Selected (batch, class, box) triples [K, 3] -> a [b, N] mask.
      make('NonMaxSuppression', ['candidate_boxes', 'nms_scores', 'nms_max',
                                 'nms_iou', 'nms_score'], ['selected']),
      make('Gather', ['selected', 'cols_bn'], ['sel_bn'], axis=1),
      make('Shape', ['selected'], ['sel_shape']),
      make('Gather', ['sel_shape', 'first'], ['sel_count']),
      make('Expand', ['one_f', 'sel_count'], ['sel_ones']),
      make('Shape', ['candidate_scores'], ['cand_shape']),
      make('ConstantOfShape', ['cand_shape'], ['zeros'], value=zero),
      make('ScatterND', ['zeros', 'sel_bn', 'sel_ones'], ['hits']),
      make('Greater', ['hits', 'half'], ['kept']),
  ]


def _output_nodes(helper, tensor_proto):
  """`kept` -> the first K kept candidates in rank (= score) order, as
  `boxes_k`, `scores_k`, `classes_k` and `num_detections`."""
  make = helper.make_node
  return [
      make('Where', ['kept', 'rank', 'minus_one'], ['kept_rank']),
      make('TopK', ['kept_rank', 'top_k'], ['top_rank', 'top_idx'], axis=-1),
      make('Greater', ['top_rank', 'half'], ['valid_b']),
      make('Cast', ['valid_b'], ['valid'], to=tensor_proto.FLOAT),
      make('Unsqueeze', ['top_idx', 'last_axis'], ['top_idx3']),
      make('GatherND', ['candidate_boxes', 'top_idx3'], ['top_boxes'],
           batch_dims=1),
      make('GatherElements', ['candidate_scores', 'top_idx'], ['top_scores'],
           axis=1),
      make('GatherElements', ['candidate_classes', 'top_idx'],
           ['top_classes'], axis=1),
      make('Cast', ['top_classes'], ['top_classes_f'], to=tensor_proto.FLOAT),
      # Rows past num_detections: zeros, class index 0 (as JAX's padding).
      make('Unsqueeze', ['valid', 'last_axis'], ['valid3']),
      make('Div', ['top_boxes', 'scale'], ['norm_boxes']),
      make('Mul', ['norm_boxes', 'valid3'], ['boxes_k']),
      make('Mul', ['top_scores', 'valid'], ['scores_k']),
      make('Mul', ['top_classes_f', 'valid'], ['classes_v']),
      make('Add', ['classes_v', 'one_f'], ['classes_k']),
      make('ReduceSum', ['valid', 'last_axis'], ['num_detections'],
           keepdims=0),
  ]


def _pad_rows(make, consts, extra):
  """Nodes naming the final outputs: K rows, padded by `extra` rows (zeros;
  class 1) when there are fewer candidates than D."""
  if extra <= 0:
    return [make('Identity', ['boxes_k'], ['detection_boxes']),
            make('Identity', ['scores_k'], ['detection_scores']),
            make('Identity', ['classes_k'], ['detection_classes'])]
  consts['pad3'] = np.asarray([0, 0, 0, 0, extra, 0], np.int64)
  consts['pad2'] = np.asarray([0, 0, 0, extra], np.int64)
  consts['zero_f'] = np.asarray(0., np.float32)
  return [make('Pad', ['boxes_k', 'pad3', 'zero_f'], ['detection_boxes']),
          make('Pad', ['scores_k', 'pad2', 'zero_f'], ['detection_scores']),
          make('Pad', ['classes_k', 'pad2', 'one_f'], ['detection_classes'])]


def two_d_max_pools(model):
  """Rewrites in place the MaxPools with more than 3 spatial axes, which
  jax2onnx 0.17 makes of `lax.reduce_window` max on NHWC arrays ([1, 1, B,
  H, W, C] with window (1, kh, kw, 1)) and onnxruntime cannot run, as a 2-D
  MaxPool between reshapes and transposes. Needs static shapes.

  Raises:
    errors.ConfigError: such a pool that is not a 2-D window.
  """
  # pylint: disable=g-import-not-at-top
  import onnx
  from onnx import helper
  from onnx import numpy_helper
  graph = model.graph
  if not any(n.op_type == 'MaxPool' and len(_ints(n, 'kernel_shape')) > 3
             for n in graph.node):
    return
  shapes = _static_shapes(onnx.shape_inference.infer_shapes(model))
  nodes = []
  for node in graph.node:
    if node.op_type != 'MaxPool' or len(_ints(node, 'kernel_shape')) <= 3:
      nodes.append(node)
      continue
    new, consts = _as_2d_pool(node, shapes[node.input[0]], helper)
    nodes.extend(new)
    graph.initializer.extend(numpy_helper.from_array(v, k)
                             for k, v in consts.items())
  del graph.node[:]
  graph.node.extend(nodes)


def _as_2d_pool(node, in_shape, helper):
  """The nodes replacing one N-d MaxPool `node` on `in_shape`."""
  k = _ints(node, 'kernel_shape')
  r = len(k)
  s = _ints(node, 'strides') or [1] * r
  p = _ints(node, 'pads') or [0] * (2 * r)
  active = [i for i in range(r) if k[i] != 1 or s[i] != 1 or p[i] or p[i + r]]
  ok = (len(in_shape) == r + 2 and in_shape[:2] == [1, 1] and len(active) == 2
        and active[1] == active[0] + 1 and not _ints(node, 'dilations')
        and not _ints(node, 'ceil_mode'))
  if not ok:
    raise errors.ConfigError(f'onnx: a {r}-d max pooling (window {k}) that '
                             'onnxruntime cannot run')
  i, dims = active[0], in_shape[2:]
  lead, tail = int(np.prod(dims[:i])), int(np.prod(dims[i + 2:]))
  out = [(dims[j] + p[j] + p[j + r] - k[j]) // s[j] + 1 for j in (i, i + 1)]
  name = node.output[0]
  consts = {f'{name}_in4': np.asarray([lead, dims[i], dims[i + 1], tail],
                                      np.int64),
            f'{name}_out': np.asarray([1, 1] + dims[:i] + out + dims[i + 2:],
                                      np.int64)}
  make = helper.make_node
  return [
      make('Reshape', [node.input[0], f'{name}_in4'], [f'{name}_4d']),
      make('Transpose', [f'{name}_4d'], [f'{name}_nchw'], perm=[0, 3, 1, 2]),
      make('MaxPool', [f'{name}_nchw'], [f'{name}_pooled'],
           kernel_shape=k[i:i + 2], strides=s[i:i + 2],
           pads=[p[i], p[i + 1], p[i + r], p[i + 1 + r]]),
      make('Transpose', [f'{name}_pooled'], [f'{name}_nhwc'],
           perm=[0, 2, 3, 1]),
      make('Reshape', [f'{name}_nhwc', f'{name}_out'], [name]),
  ], consts


def _ints(node, name):
  """A MaxPool attribute's value ([] or 0 where absent)."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  for attribute in node.attribute:
    if attribute.name == name:
      value = helper.get_attribute_value(attribute)
      return list(value) if isinstance(value, (list, tuple)) else value
  return []


def _static_shapes(model):
  """{value name: [int dims]} of the values with fully static shapes."""
  out = {}
  for v in list(model.graph.value_info) + list(model.graph.input):
    dims = v.type.tensor_type.shape.dim
    if dims and all(d.HasField('dim_value') for d in dims):
      out[v.name] = [int(d.dim_value) for d in dims]
  return out


def dedupe_initializers(model):
  """Keeps one of each set of identical initializers (same type, shape and
  bytes), in place. jax2onnx writes a weight once per use (each `apply` of
  the flip test transposes the kernels again), which doubled a detector's
  file."""
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  graph = model.graph
  first, renamed, kept = {}, {}, []
  for tensor in graph.initializer:
    data = numpy_helper.to_array(tensor)
    key = (tensor.data_type, tuple(tensor.dims),
           hashlib.sha256(data.tobytes()).hexdigest())
    if key in first:
      renamed[tensor.name] = first[key]
    else:
      first[key] = tensor.name
      kept.append(tensor)
  if not renamed:
    return
  for node in _all_nodes(graph):
    for i, name in enumerate(node.input):
      if name in renamed:
        node.input[i] = renamed[name]
  del graph.initializer[:]
  graph.initializer.extend(kept)


def _all_nodes(graph):
  """The nodes of `graph` and of its subgraphs (loops, conditionals)."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  for node in graph.node:
    yield node
    for attribute in node.attribute:
      value = helper.get_attribute_value(attribute)
      for sub in value if isinstance(value, list) else [value]:
        if hasattr(sub, 'node'):  # A GraphProto.
          yield from _all_nodes(sub)
