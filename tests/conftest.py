"""Shared fixtures: the tiny shapes dataset is generated once per session."""

import os
import sys

import pytest

import detector  # pylint: disable=unused-import  # XLA flags before JAX starts.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data dir holding `shapes/tiny`, generated once for all tests."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import shapes  # pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('shapes/tiny', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture
def tiny_config(tiny_data_dir):
  """configs/cnn.py:tiny reading the session's tiny dataset (unlocked copy)."""
  import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config('tiny')
  config.dataset.data_dir = tiny_data_dir
  return config
