import torch

# One intra-op thread: the models under test are small, and on a 2-core machine extra threads
# contend with each other and with pytest itself (measured 0.9 ms vs 17 ms per SGLD step).
torch.set_num_threads(1)
