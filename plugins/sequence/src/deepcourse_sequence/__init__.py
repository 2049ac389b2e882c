"""deepcourse-sequence: RNN, LSTM, GRU, BiLSTM and BiLSTM-CRF taggers for CoNLL-format data.

Importing this package registers everything (the `deepcourse.plugins` entry point does it for you):
datasets `conll2003` and `conll`, models `rnn_tagger`, `lstm_tagger`, `gru_tagger`, `bilstm_tagger` and
`bilstm_crf`, the task `sequence-tagging` and the metric `span_f1`.
"""
from . import datasets, metrics, models, task  # noqa: F401 - registration side effects

__version__ = "0.1.0"
#: imported lazily by the span metric; `deepcourse plugins` imports it before it reports this plugin "ok"
HEAVY_MODULES = ("seqeval",)
