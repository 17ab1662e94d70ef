# Sourced by quickstart.sh and test.sh: install vitcli without ever pulling CUDA wheels on a
# CPU machine. A torch that is already installed (any build >= 2.4) is kept; otherwise the
# CPU build torch==2.13.0 goes in first, so that `torch>=2.4` is already satisfied.
if ! python3 -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) < (2, 4))" 2>/dev/null; then
    python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".${VITCLI_EXTRAS:-}"   # test.sh sets VITCLI_EXTRAS="[dev]"
