"""Runs inside a build venv: one JSON line with the facts of its torch (version, CUDA
variant, git version, C++11 ABI flag, location), which toolchain.read_torch_facts turns
into TorchFacts. Imports torch; fails (non-zero exit) when torch is missing or broken."""

import json

if __name__ == "__main__":
    import torch

    print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
                      "git_version": torch.version.git_version,
                      "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                      "location": torch.__file__}))
