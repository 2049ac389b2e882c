"""Sequence taggers: one file per family, as in timm and torchvision.

`chars` holds the character-level word encoders (char BiLSTM of Lample et al., char CNN of Ma & Hovy), `heads`
the output layers (softmax, CRF), `recurrent` the RNN/LSTM/GRU/BiLSTM(-CRF) taggers registered as models.
"""
from . import recurrent  # noqa: F401 - registers the models
