# Sourced by quickstart.sh and test.sh: install vitcli. A torch that is already installed (any
# build >= 2.4) is kept. Otherwise torch==2.13.0 goes in first, so that `torch>=2.4` is already
# satisfied: on Linux without an NVIDIA GPU from PyTorch's CPU wheel index (the default index
# serves the CUDA build there, several gigabytes) when that index can be reached, else from
# the default index (or a local wheel cache that pip is configured with).
if ! python3 -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) < (2, 4))" 2>/dev/null; then
    cpu_index=https://download.pytorch.org/whl/cpu
    if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 \
            && [ ! -e /proc/driver/nvidia ] \
            && python3 -c "import socket; socket.create_connection(('download.pytorch.org', 443), 3)" 2>/dev/null; then
        python3 -m pip install -q "torch==2.13.0" --index-url "$cpu_index"
    else
        python3 -m pip install -q "torch==2.13.0"
    fi
fi
python3 -m pip install -q -e ".${VITCLI_EXTRAS:-}"   # test.sh sets VITCLI_EXTRAS="[dev]"
