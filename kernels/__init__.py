"""The CUDA C sources of bpgpu's kernels, shipped as package data (``bpgpu.kernels``).

Not Python: ``bpgpu.backends.cuda_source`` locates these files and compiles them.
"""
