"""fusedrnn: fused LSTM/GRU/RNN kernels for PyTorch, as drop-ins for torch.nn.

    import fusedrnn
    rnn = fusedrnn.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)
    rnn.load_state_dict(torch_lstm.state_dict())
    out, (h_n, c_n) = rnn(x, (h0, c0))
"""

from . import reference
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .ops import backend, build_info
from .streaming import tbptt

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "backend", "build_info",
           "reference", "tbptt"]
__version__ = "0.1.0"
