#!/usr/bin/env bash
# A YAML-driven run: every flag comes from the YAML file, the command line overrides it.
#   bash examples/pretrain_yaml.sh                                  # examples/gpt_muon_cpu.yaml
#   CONFIG=examples/gpt_muon.yaml NPROC=8 bash examples/pretrain_yaml.sh   # the bigger bf16 config (GPUs)
# Leaves runs/<config name>/{metrics.jsonl,training.png,iter_*/}.
source "$(dirname "$0")/_launch.sh"
CONFIG="${CONFIG:-examples/gpt_muon_cpu.yaml}"
RUN_DIR="${RUN_DIR:-runs/$(basename "$CONFIG" .yaml)}"
launch --yaml-cfg "$CONFIG" --save "$RUN_DIR" --load "$RUN_DIR" "$@"
