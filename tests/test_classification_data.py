"""Image-classification data: a `folder:DIR` of class folders with every
defect the data-quality report names (and the exact counts it gives), the
labels that reach the TFDS dataset and the tf.data pipeline, the hash split
of a folder without split folders, TFDS classification datasets offline
(tfds.testing.mock_data), exact resume, and the preprocessing geometry
against PIL and against images that encode their own pixel positions."""

import io
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from detector.configs import classify
from detector.configs import cnn
from detector import errors
from detector.data import classification
from detector.data import datasets
from detector.data import detection
from detector.data import formats
from detector.data import loading
from detector.data import quality
from detector.data.formats import class_folder

H, W = 20, 24  # Every image written here is 20 high, 24 wide.
COLOURS = {'cat': (220, 40, 40), 'dog': (40, 200, 40), 'fish': (40, 40, 220)}
CLASSES = ['cat', 'dog', 'fish']  # Sorted folder names = the labels 0, 1, 2.


def _pixels(cls, seed):
  """The class's solid colour plus small noise (distinct per seed)."""
  rng = np.random.default_rng(seed)
  noise = rng.integers(-12, 13, (H, W, 3))
  return np.clip(np.array(COLOURS[cls]) + noise, 0, 255).astype(np.uint8)


def _write(path, pixels, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, format=fmt, quality=95)


def _colour_class(image):
  """The class whose colour is nearest the image's mean colour; asserts the
  match is unambiguous (the nearest at least 3x nearer than the next)."""
  mean = image.reshape(-1, 3).astype(np.float64).mean(0)
  d = np.array([np.linalg.norm(mean - COLOURS[c]) for c in CLASSES])
  first, second = np.sort(d)[:2]
  assert first * 3 < second, (mean, d)
  return int(np.argmin(d))


# The split-folder dataset: (split folder, class, file) -> the class its
# pixels show. Two files copy another's bytes (see make_split_folder).
IMAGES = {
    ('train', 'cat', 'c0.png'): 'cat', ('train', 'cat', 'c1.png'): 'cat',
    ('train', 'cat', 'c2.png'): 'cat',
    ('train', 'dog', 'd0.png'): 'dog', ('train', 'dog', 'd1.png'): 'dog',
    ('train', 'dog', 'd2.jpg'): 'dog',
    ('train', 'fish', 'f0.png'): 'fish', ('train', 'fish', 'f1.jpeg'): 'fish',
    ('valid', 'cat', 'v0.png'): 'cat', ('valid', 'cat', 'v1.png'): 'cat',
    ('valid', 'cat', 'v2.png'): 'cat',
    ('valid', 'dog', 'v0.png'): 'dog', ('valid', 'dog', 'v1.png'): 'dog',
    ('test', 'cat', 't0.png'): 'cat', ('test', 'cat', 't1.png'): 'cat',
    ('test', 'dog', 't0.png'): 'dog', ('test', 'fish', 't0.png'): 'fish',
    # Copies: train/cat/c0.png (leakage) and test/cat/t1.png (a cat filed
    # under fish: the same bytes under two classes).
    ('test', 'cat', 't_leak.png'): 'cat',
    ('test', 'fish', 't_conflict.png'): 'cat',
}
SPLIT_OF = {'train': 'train', 'valid': 'validation', 'test': 'test'}


def make_split_folder(root):
  """DIR/{train,valid,test}/<class>/ with every folder: defect."""
  for i, ((split, cls, name), shows) in enumerate(sorted(IMAGES.items())):
    if name.startswith('t_'):
      continue
    _write(os.path.join(root, split, cls, name), _pixels(shows, i))
  shutil.copyfile(os.path.join(root, 'train', 'cat', 'c0.png'),
                  os.path.join(root, 'test', 'cat', 't_leak.png'))
  shutil.copyfile(os.path.join(root, 'test', 'cat', 't1.png'),
                  os.path.join(root, 'test', 'fish', 't_conflict.png'))
  os.makedirs(os.path.join(root, 'valid', 'fish'))  # No fish to validate.
  # A truncated JPEG (its header is fine: only decoding every pixel fails).
  out = io.BytesIO()
  Image.fromarray(_pixels('dog', 99)).save(out, format='JPEG')
  with open(os.path.join(root, 'train', 'dog', 'broken.jpg'), 'wb') as f:
    f.write(out.getvalue()[:len(out.getvalue()) // 2])
  _write(os.path.join(root, 'train', 'loose.png'), _pixels('cat', 98))
  for path in ('README.md', 'train/notes.txt', 'train/cat/notes.txt'):
    with open(os.path.join(root, path), 'w') as f:
      f.write('not an image\n')
  with open(os.path.join(root, 'train', 'cat', '.DS_Store'), 'wb') as f:
    f.write(b'\0\1hidden')  # Hidden files are not the dataset's: ignored.
  return root


@pytest.fixture(scope='module')
def split_folder(tmp_path_factory):
  """(root, data_dir, report): the folder written and converted once."""
  root = make_split_folder(str(tmp_path_factory.mktemp('pets') / 'pets'))
  data_dir = str(tmp_path_factory.mktemp('data'))
  _, report = datasets.convert('folder', root, data_dir, verbose=False)
  return root, data_dir, report


def _config(root, data_dir, **changes):
  """configs/classify.py:tiny on `folder:root`, batches of 4."""
  config = classify.get_config('tiny')
  config.dataset = 'folder:' + root
  config.data_dir = data_dir
  config.batch_size = 4
  config.eval_batch_size = 4
  config.input.augmentations = ('random_resized_crop', 'hflip', 'color_jitter')
  for key, value in changes.items():
    config[key] = value
  return config


def test_split_folder_report(split_folder):
  root, _, report = split_folder

  def p(*parts):
    return os.path.join(root, *parts)

  assert report['spec'] == f'folder:{root}' and report['source'] == root
  assert report['classes'] == CLASSES and report['category_ids'] == [0, 1, 2]
  # 20 images listed in class folders (19 readable) + 1 outside any class
  # folder; the .txt files are not images and the hidden file is ignored.
  assert report['totals'] == dict(images_read=21, images_kept=19,
                                  images_skipped=2)
  t = report['totals']
  assert t['images_read'] == t['images_kept'] + t['images_skipped']
  problems = report['problems']
  assert {k: v['count'] for k, v in problems.items()} == {
      'not_an_image': 3, 'outside_class_folder': 1, 'unreadable_image': 1,
      'duplicate_across_splits': 1, 'duplicate_within_split': 1,
      'duplicate_conflicting_labels': 1, 'class_without_images': 1}
  for kind, problem in problems.items():
    assert problem['action'] == quality.ACTIONS[kind]
  assert set(problems['not_an_image']['files']) == {
      p('README.md'), p('train', 'notes.txt'), p('train', 'cat', 'notes.txt')}
  assert set(problems['outside_class_folder']['files']) == {p('train', 'loose.png')}
  assert set(problems['unreadable_image']['files']) == {
      p('train', 'dog', 'broken.jpg')}
  assert set(problems['class_without_images']['files']) == {'fish (validation)'}
  [leak] = problems['duplicate_across_splits']['files']
  assert (p('train', 'cat', 'c0.png') in leak and
          p('test', 'cat', 't_leak.png') in leak and '(train)' in leak and
          '(test)' in leak)
  [within] = problems['duplicate_within_split']['files']
  assert p('test', 'cat', 't1.png') in within and 't_conflict.png' in within
  [conflict] = problems['duplicate_conflicting_labels']['files']
  assert conflict == (f'{p("test", "cat", "t1.png")} (cat) = '
                      f'{p("test", "fish", "t_conflict.png")} (fish)')
  # Images per class and split, from the table above.
  expected = {}
  for (split, cls, _), _ in IMAGES.items():
    per_class = expected.setdefault(SPLIT_OF[split], dict.fromkeys(CLASSES, 0))
    per_class[cls] += 1
  assert expected['validation'] == {'cat': 3, 'dog': 2, 'fish': 0}
  assert set(report['splits']) == {'train', 'validation', 'test'}
  for split, s in report['splits'].items():
    assert s['images_per_class'] == expected[split], split
    assert s['images'] == sum(expected[split].values())
    assert set(s['image_height_quantiles'].values()) == {float(H)}
    assert set(s['image_width_quantiles'].values()) == {float(W)}
  text = quality.format_report(report)
  assert text.startswith(f'Data-quality report for folder:{root}')
  assert 'images: 21 read, 19 kept, 2 skipped' in text
  assert '  validation: 5 images: cat 3, dog 2, fish 0' in text
  assert '  train: 8 images: cat 3, dog 3, fish 2' in text
  for kind in problems:
    assert f'  {kind}: {problems[kind]["count"]} (' in text
  # Converting the unchanged folder again reads the cached conversion.
  again, report_again = datasets.convert('folder', root, split_folder[1],
                                         verbose=False)
  assert report_again == report
  assert os.path.join(again, 'report.json') == report['report']
  assert os.path.basename(again).startswith('folder_pets_')


def test_folder_labels_reach_the_tfds_dataset(split_folder):
  root, data_dir, _ = split_folder
  builder = datasets.get_builder('folder:' + root, data_dir, verbose=False)
  assert isinstance(builder.info.features['label'], tfds.features.ClassLabel)
  assert classification.class_names(builder) == CLASSES
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      'train': 8, 'validation': 5, 'test': 6}
  for folder, split in SPLIT_OF.items():
    kept = sorted(os.path.join(folder, cls, name)
                  for (f, cls, name) in IMAGES if f == folder)
    names = classification.filenames(builder, split)
    assert sorted(names) == kept
    ds = builder.as_dataset(split=split, shuffle_files=False)
    for name, ex in zip(names, tfds.as_numpy(ds)):
      folder_, cls, file = name.split('/')
      assert ex['label'] == CLASSES.index(cls), name
      assert ex['image'].shape == (H, W, 3)
      assert _colour_class(ex['image']) == CLASSES.index(
          IMAGES[(folder_, cls, file)]), name


def _take(config, builder, start, n):
  ds = classification.train_dataset(config, builder, start_step=start)
  return [b for _, b in zip(range(n), tfds.as_numpy(ds))]


def test_pipeline_labels_are_the_folders(split_folder):
  """Every training and evaluation image shows its label's colour; each
  training epoch holds the train split's labels once; evaluation covers
  the split once, in order, the last batch padded."""
  root, data_dir, _ = split_folder
  config = _config(root, data_dir)
  builder = loading.get_builder(config)
  batches = _take(config, builder, 0, 6)  # 3 epochs of the 8 train images.
  for batch in batches:
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
    for image, label in zip(batch['image'], batch['label']):
      assert _colour_class(image) == label
  labels = np.concatenate([b['label'] for b in batches])
  for epoch in range(3):
    assert sorted(labels[8 * epoch:8 * epoch + 8]) == [0, 0, 0, 1, 1, 1, 2, 2]

  names = classification.filenames(builder, 'validation')
  evals = list(classification.eval_batches(config, builder, 'validation'))
  assert len(evals) == 2  # 5 images in batches of 4.
  assert [list(b['example_mask']) for b in evals] == [[True] * 4,
                                                      [True] + [False] * 3]
  mask = np.concatenate([b['example_mask'] for b in evals])
  index = np.concatenate([b['index'] for b in evals])
  label = np.concatenate([b['label'] for b in evals])
  images = np.concatenate([b['image'] for b in evals])
  assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
  assert list(index[mask]) == [0, 1, 2, 3, 4]
  assert (index[~mask] == -1).all() and (images[~mask] == 0).all()
  for i, lab, image in zip(index[mask], label[mask], images[mask]):
    assert lab == CLASSES.index(names[i].split('/')[1]), names[i]
    assert _colour_class(image) == lab

  # The test split (6 images, one batch): a cat's copy filed under fish keeps
  # the fish label the folder gives it.
  names = classification.filenames(builder, 'test')
  [batch] = classification.eval_batches(config, builder, 'test', batch_size=6)
  assert batch['example_mask'].all() and list(batch['index']) == list(range(6))
  for i, lab, image in zip(batch['index'], batch['label'], batch['image']):
    folder_, cls, file = names[i].split('/')
    assert lab == CLASSES.index(cls)
    assert _colour_class(image) == CLASSES.index(IMAGES[(folder_, cls, file)])


def test_resume_continues_the_same_stream(split_folder):
  root, data_dir, _ = split_folder
  config = _config(root, data_dir)
  builder = loading.get_builder(config)
  first = _take(config, builder, 0, 6)
  again = _take(config, builder, 0, 6)
  resumed = _take(config, builder, 3, 3)
  for a, b in zip(first, again):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[3:], resumed):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  # Not trivially equal: the stream's batches differ from one another.
  assert not np.array_equal(first[0]['image'], first[3]['image'])
  assert not np.array_equal(first[3]['image'], first[4]['image'])


# folder: without split folders.

FLAT_CLASSES = ('ant', 'bee', 'wasp')


def _write_flat(root, count, start=0):
  """`count` tiny images spread over FLAT_CLASSES; returns their relpaths."""
  rels = []
  for i in range(start, start + count):
    rel = os.path.join(FLAT_CLASSES[i % 3], f'img{i:04d}.png')
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', (4, 4), (i % 256, 0, 0)).save(path)
    rels.append(rel)
  return rels


@pytest.fixture(scope='module')
def flat_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('flat') / 'insects')
  return root, _write_flat(root, 200)


def _assignment(source):
  return {os.path.relpath(r.path, source.root): split
          for split, records in source.splits.items() for r in records}


def test_hash_split_puts_every_image_in_one_split(flat_folder, tmp_path):
  root, rels = flat_folder
  source = class_folder.read(root, (0.8, 0.1, 0.1))
  assert source.class_names == list(FLAT_CLASSES) and not source.skipped_files
  records = [r for rs in source.splits.values() for r in rs]
  assert len(records) == 200
  assigned = _assignment(source)
  assert sorted(assigned) == sorted(rels)  # Each file once.
  for r in records:
    assert r.label == FLAT_CLASSES.index(os.path.relpath(r.path, root).split('/')[0])
  assert len({r.image_id for r in records}) == 200
  counts = {s: len(v) for s, v in source.splits.items()}
  assert 140 <= counts['train'] <= 180, counts
  assert 6 <= counts['validation'] <= 36 and 6 <= counts['test'] <= 36, counts
  for rel, split in assigned.items():
    assert class_folder.hash_split(rel, (0.8, 0.1, 0.1)) == split
  # Other fractions.
  half = class_folder.read(root, (0.5, 0.25, 0.25))
  counts = {s: len(v) for s, v in half.splits.items()}
  assert 75 <= counts['train'] <= 125 and 30 <= counts['test'] <= 70, counts
  only_train = class_folder.read(root, (1, 0, 0))
  assert list(only_train.splits) == ['train'] and len(only_train.splits['train']) == 200
  no_test = class_folder.read(root, (0.5, 0.5, 0))
  assert set(no_test.splits) == {'train', 'validation'}
  assert sum(map(len, no_test.splits.values())) == 200

  # Adding files (and a class) moves no file to another split.
  grown = str(tmp_path / 'insects')
  shutil.copytree(root, grown)
  new = _write_flat(grown, 40, start=200)
  os.makedirs(os.path.join(grown, 'aphid'))
  Image.new('RGB', (4, 4)).save(os.path.join(grown, 'aphid', 'a.png'))
  after = _assignment(class_folder.read(grown, (0.8, 0.1, 0.1)))
  assert len(after) == 241
  assert {rel: after[rel] for rel in rels} == assigned
  assert {after[rel] for rel in new} <= {'train', 'validation', 'test'}


def test_split_fractions_choose_the_conversion(flat_folder, tmp_path):
  root, _ = flat_folder
  data_dir = str(tmp_path / 'data')
  config = _config(root, data_dir, folder_split=(0.6, 0.2, 0.2))
  builder = loading.get_builder(config)
  expected = class_folder.read(root, (0.6, 0.2, 0.2))
  for split, records in expected.splits.items():
    assert builder.info.splits[split].num_examples == len(records)
    # TFDS orders a split by its keys' hashes: compare as sets.
    assert sorted(classification.filenames(builder, split)) == sorted(
        os.path.relpath(r.path, root) for r in records)
  other = datasets.get_builder('folder:' + root, data_dir, verbose=False,
                               split_fractions=(0.8, 0.1, 0.1))
  assert str(other.data_dir) != str(builder.data_dir)
  assert other.info.splits['train'].num_examples == len(
      class_folder.read(root).splits['train'])
  # Two random splits of one folder are two datasets: converting the second
  # leaves the first in place (jobs sharing a data_dir do not undo each other).
  assert os.path.isdir(str(builder.data_dir))


def test_split_fractions_do_not_matter_with_split_folders(split_folder, tmp_path):
  root = split_folder[0]
  a, _ = datasets.convert('folder', root, str(tmp_path), verbose=False,
                          split_fractions=(0.8, 0.1, 0.1))
  b, _ = datasets.convert('folder', root, str(tmp_path), verbose=False,
                          split_fractions=(0.5, 0.25, 0.25))
  assert a == b


def test_split_and_class_folders_mixed_are_refused(tmp_path):
  """A class named like a split, or an extra folder beside the split
  folders, would silently lose images: refused, naming both kinds."""
  for extra in ('bus', 'extra'):
    root = tmp_path / extra
    for sub in ('train/cat', 'test/cat', f'{extra}/dog'):
      (root / sub).mkdir(parents=True)
      Image.new('RGB', (4, 4)).save(root / sub / 'a.png')
    with pytest.raises(formats.DataError, match=(
        rf"holds split folders \['test', 'train'\] and other folders \['{extra}'\]")):
      class_folder.read(str(root))


@pytest.mark.parametrize('fractions', [(0.5, 0.3, 0.1), (1.2, -0.1, -0.1),
                                       (0.5, 0.5), (0.25, 0.25, 0.25, 0.25),
                                       (float('nan'), 0.5, 0.5)])
def test_bad_split_fractions(fractions, flat_folder, tmp_path):
  root, _ = flat_folder
  match = re.escape('config.folder_split=')
  with pytest.raises(errors.ConfigError, match=match):
    class_folder.check_split_fractions(fractions)
  with pytest.raises(errors.ConfigError, match=match):
    class_folder.read(root, fractions)
  config = _config(root, str(tmp_path), folder_split=fractions)
  with pytest.raises(errors.ConfigError, match=match):
    loading.get_builder(config)
  assert not os.path.exists(tmp_path / 'detector_folders')


def test_folders_without_class_folders_fail_naming_the_path(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  loose = tmp_path / 'loose'
  loose.mkdir()
  Image.new('RGB', (4, 4)).save(loose / 'a.png')
  (loose / 'notes.txt').write_text('x')
  empty_classes = tmp_path / 'empty_classes'
  (empty_classes / 'cat').mkdir(parents=True)
  (empty_classes / 'dog').mkdir()
  empty_splits = tmp_path / 'empty_splits'
  (empty_splits / 'train' / 'cat').mkdir(parents=True)
  for root in (empty, loose, empty_classes, empty_splits):
    match = re.escape(f'folder:{root}: no images in class folders')
    with pytest.raises(formats.DataError, match=match):
      class_folder.read(str(root))
    with pytest.raises(formats.DataError, match=match):
      datasets.get_builder(f'folder:{root}', str(tmp_path / 'data'),
                           verbose=False)
  with pytest.raises(formats.DataError, match=re.escape(
      f'{tmp_path / "nothere"} is not a folder')):
    datasets.get_builder(f'folder:{tmp_path / "nothere"}', str(tmp_path))


# TFDS classification datasets, offline.


@pytest.mark.parametrize('name,num_classes,first', [
    ('imagenette', 10, 'n01440764'), ('oxford_iiit_pet', 37, 'Abyssinian'),
    ('tf_flowers', 5, 'dandelion'), ('cats_vs_dogs', 2, 'cat')])
def test_tfds_classification_datasets_feed_the_pipeline(name, num_classes,
                                                        first, tmp_path):
  config = _config('', str(tmp_path))
  config.dataset = name
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              num_examples=6):
    builder = loading.get_builder(config)
    names = classification.class_names(builder, config.label_key, name)
    assert len(names) == num_classes and names[0] == first
    if name == 'oxford_iiit_pet':
      assert classification.class_names(builder, 'species') == ['Cat', 'Dog']
    for batch in _take(config, builder, 0, 2):
      assert batch['image'].shape == (4, 32, 32, 3)
      assert batch['image'].dtype == np.uint8
      assert batch['label'].dtype == np.int32
      assert ((batch['label'] >= 0) & (batch['label'] < num_classes)).all()
    # A detection config names the features and points to classify.py.
    with pytest.raises(errors.ConfigError,
                       match=r"no boxes .*'label'.*configs/classify\.py"):
      detection.class_names(builder, name)


def _sliceable_mock(num_examples, num_classes):
  """mock_data's as_dataset_fn for a dataset whose only split is `train` of
  `num_examples`: example i is a constant image of value 10 * i + 5 and label
  i % num_classes, and a split spec (`train[75%:]`) selects the examples TFDS
  reads for it."""
  def as_dataset(builder, split, decoders=None, read_config=None,
                 shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs
    instruction = (split if isinstance(split, tfds.core.ReadInstruction)
                   else tfds.core.ReadInstruction.from_spec(split))
    index = np.concatenate([
        np.arange(num_examples)[a.from_:a.to]
        for a in instruction.to_absolute(builder.info.splits)])
    sizes = [(30 + int(i), 40 - int(i)) for i in index]  # Various shapes.
    images = tf.data.Dataset.from_generator(
        lambda: (np.full(s + (3,), 10 * i + 5, np.uint8)
                 for s, i in zip(sizes, index)),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    labels = tf.data.Dataset.from_tensor_slices(
        (index % num_classes).astype(np.int64))
    ds = tf.data.Dataset.zip({'image': images, 'label': labels})
    return ds.apply(tf.data.experimental.assert_cardinality(len(index)))
  return as_dataset


@pytest.mark.parametrize('name,num_classes', [('tf_flowers', 5),
                                              ('cats_vs_dogs', 2)])
def test_train_only_datasets_are_split_by_slicing(name, num_classes, tmp_path):
  config = _config('', str(tmp_path), train_split='train[:75%]',
                   eval_split='train[75%:]')
  config.dataset = name
  config.batch_size = 5
  # Crops and flips keep a constant image constant (colour jitter would not).
  config.input.augmentations = ('random_resized_crop', 'hflip')
  n = 20
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_sliceable_mock(n, num_classes)):
    builder = loading.get_builder(config)
    # USE_CODE knows no splits: give the builder the one split it has.
    builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name='train', shard_lengths=[n], num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=builder.name,
            split='train', filetype_suffix='tfrecord',
            template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'))]))
    assert loading.split_size(builder, config.train_split) == 15
    assert loading.split_size(builder, config.eval_split) == 5
    # Training: 3 batches of 5 = one epoch of train[:75%] = examples 0..14.
    batches = _take(config, builder, 0, 3)
    seen = []
    for batch in batches:
      for image, label in zip(batch['image'], batch['label']):
        assert (image == image[0, 0, 0]).all()
        i = (int(image[0, 0, 0]) - 5) // 10
        assert label == i % num_classes
        seen.append(i)
    assert sorted(seen) == list(range(15))
    # Evaluation: train[75%:] = examples 15..19, in order, once.
    evals = list(classification.eval_batches(config, builder, config.eval_split))
    assert len(evals) == 2  # 5 examples in batches of 4.
    mask = np.concatenate([b['example_mask'] for b in evals])
    assert mask.sum() == 5 and list(mask) == [True] * 5 + [False] * 3
    index = np.concatenate([b['index'] for b in evals])[mask]
    images = np.concatenate([b['image'] for b in evals])[mask]
    labels = np.concatenate([b['label'] for b in evals])[mask]
    assert list(index) == [0, 1, 2, 3, 4]
    original = [15, 16, 17, 18, 19]
    for image, label, i in zip(images, labels, original):
      assert (image == 10 * i + 5).all()  # A constant survives the crop.
      assert label == i % num_classes


# Preprocessing geometry.


def _gradient(h, w):
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  return np.stack([x * 200 / w + 20, y * 200 / h + 30, (x + y) * 100 / (h + w)
                   + 80], -1).round().astype(np.uint8)


def _pil_center_crop(pixels, size, fraction):
  """Resize (PIL bilinear, aspect kept) to cover size / fraction, then cut
  the centre `size`: torchvision's Resize(round(s / f)) + CenterCrop(s)."""
  (h, w), (ih, iw) = size, pixels.shape[:2]
  scale = max(h / fraction / ih, w / fraction / iw)
  nh, nw = max(round(ih * scale), h), max(round(iw * scale), w)
  resized = np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - h) // 2, (nw - w) // 2
  return resized[top:top + h, left:left + w]


@pytest.mark.parametrize('shape,size,fraction', [
    ((60, 90), (32, 32), 0.875), ((90, 60), (32, 32), 0.875),
    ((60, 90), (24, 40), 1.0), ((20, 30), (32, 32), 0.875),
    ((64, 64), (32, 32), 0.5)])
def test_center_crop_equals_pil(shape, size, fraction):
  pixels = _gradient(*shape)
  out = classification.center_crop(tf.constant(pixels), size, fraction).numpy()
  assert out.shape == size + (3,)
  ref = _pil_center_crop(pixels, size, fraction).astype(np.float64)
  # Measured: at most 0.95 grey levels apart (edge filters, rounding).
  assert np.abs(out - ref).max() <= 1.5, np.abs(out - ref).max()


def _crop_extent(values, n):
  """(start, length) in input pixels of a bilinear resize to n pixels of a
  ramp value = position: output pixel i samples start - 0.5 + (i + 0.5) *
  length / n; fitted on interior pixels (away from the edge filters)."""
  i = np.arange(3, n - 3)
  slope, intercept = np.polyfit(i, values[3:n - 3], 1)
  return intercept + 0.5 - 0.5 * slope, slope * n


@pytest.mark.parametrize('scale,ratio', [((0.08, 1.0), (3 / 4, 4 / 3)),
                                         ((0.25, 0.5), (0.5, 2.0))])
def test_random_resized_crop_area_and_aspect(scale, ratio):
  ih, iw, n = 120, 150, 32
  y, x = np.mgrid[0:ih, 0:iw].astype(np.float32)
  image = tf.constant(np.stack([y, x, np.zeros_like(y)], -1))
  crops = 0
  for seed in range(12):
    out = classification.random_resized_crop(
        image, (n, n), tf.constant([seed, 7], tf.int64), scale, ratio).numpy()
    assert out.shape == (n, n, 3) and out.dtype == np.float32
    y0, ch = _crop_extent(out[:, n // 2, 0], n)
    x0, cw = _crop_extent(out[n // 2, :, 1], n)
    # A window of whole pixels inside the image (recovered to ~0.02 px).
    np.testing.assert_allclose([y0, ch, x0, cw], np.round([y0, ch, x0, cw]),
                               atol=0.1)
    assert -0.1 <= y0 and y0 + ch <= ih + 0.1 and -0.1 <= x0 and x0 + cw <= iw + 0.1
    area, aspect = ch * cw / (ih * iw), cw / ch
    if abs(ch - ih) < 0.5 and abs(cw - iw) < 0.5:
      continue  # The fallback after 10 tries: the whole image.
    crops += 1
    # Up to the rounding of the window's sides to whole pixels.
    assert scale[0] * 0.97 <= area <= scale[1] * 1.03, (seed, area)
    assert ratio[0] * 0.97 <= aspect <= ratio[1] * 1.03, (seed, aspect)
  assert crops >= 9
  # Different seeds, different crops; the same seed, the same crop.
  a, b, c = (classification.random_resized_crop(
      image, (n, n), tf.constant(s, tf.int64), scale, ratio).numpy()
             for s in ([1, 2], [1, 2], [3, 4]))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_task_and_dataset_kinds_mismatch(split_folder, tiny_config):
  root, data_dir, _ = split_folder
  config = cnn.get_config('tiny')
  config.dataset = 'folder:' + root
  config.data_dir = data_dir
  builder = loading.get_builder(config)
  with pytest.raises(errors.ConfigError) as e:
    detection.class_names(builder, config.dataset)
  message = str(e.value)
  assert f"config.dataset='folder:{root}'" in message
  assert "['image', 'image/filename', 'image/id', 'label']" in message
  assert 'image-classification dataset' in message
  assert 'configs/classify.py' in message
  # The other way round: a detection dataset in a classification config.
  shapes = loading.get_builder(tiny_config)
  with pytest.raises(errors.ConfigError, match=r"(?s)no class label.*"
                     r"config\.label_key='label'.*'objects'.*"
                     r'It is a detection dataset'):
    classification.class_names(shapes, 'label', 'shapes/tiny')
  # A label feature the dataset lacks.
  with pytest.raises(errors.ConfigError, match=r"config\.label_key='species'"):
    classification.class_names(builder, 'species')
