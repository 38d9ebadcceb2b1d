"""A small forward+backward of every CUDA kernel, for compute-sanitizer.

Run under `compute-sanitizer --tool memcheck|racecheck|synccheck|initcheck` with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 (gpu_check/run.sh does). Set
FUSEDRNN_PERSISTENT=1 to cover the persistent kernels.
"""

import torch

import fusedrnn


def main():
    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(5, 3, 8, device=dev)
    lengths = torch.tensor([5, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    for mode, extra in (("LSTM", dict(proj_size=6)), ("LSTM", {}), ("GRU", {})):
        model = getattr(fusedrnn, mode)(8, 12, num_layers=2, bidirectional=True, **extra).to(dev)
        for inp in (x, packed):
            out, _ = model(inp)
            data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
            data.sum().backward()
    torch.cuda.synchronize()
    print("sanitizer case done")


if __name__ == "__main__":
    main()
