#!/bin/sh
# test stand-in for nvidia-smi: answers the two queries flexorch asks with the recorded CSV
# in $HOME/nvidia-smi-gpus.csv and $HOME/nvidia-smi-apps.csv (nvidia-smi's own output format)
case "$1" in
  --query-gpu=*) cat "$HOME/nvidia-smi-gpus.csv" ;;
  --query-compute-apps=*) cat "$HOME/nvidia-smi-apps.csv" 2>/dev/null; true ;;
  *) echo "stand-in: unexpected arguments $*" >&2; exit 2 ;;
esac
