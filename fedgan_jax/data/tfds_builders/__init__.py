"""TFDS builders for ChestX-ray14 and MedMNIST (array_record, read with `tfds.data_source`).

TensorFlow is not needed: the builders yield PNG bytes that they encode with
PIL, and `tfds.data_source` decodes them with numpy/PIL. See `reader.py` for
preparing a builder and reading a split back as numpy arrays.
"""
