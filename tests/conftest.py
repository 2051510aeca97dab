"""Shared fixtures: the real data beside the checkout, and small helpers."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  """`$FEDGAN_SHARED_DATA`, else `../shared/data` beside the checkout."""
  return pathlib.Path(os.environ.get('FEDGAN_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture
def pneumoniamnist_path() -> pathlib.Path:
  path = shared_data_dir() / 'medmnist' / 'pneumoniamnist.npz'
  if not path.exists():
    pytest.skip(f'real PneumoniaMNIST subset not found at {path} (set FEDGAN_SHARED_DATA to the '
                'folder holding medmnist/pneumoniamnist.npz)')
  return path


@pytest.fixture
def cxr14_csv_path() -> pathlib.Path:
  path = shared_data_dir() / 'cxr14' / 'Data_Entry_2017_rows1-40000.csv'
  if not path.exists():
    pytest.skip(f'real ChestX-ray14 metadata not found at {path} (set FEDGAN_SHARED_DATA to the '
                'folder holding cxr14/Data_Entry_2017_rows1-40000.csv)')
  return path
