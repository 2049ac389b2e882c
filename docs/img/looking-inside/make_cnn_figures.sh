#!/usr/bin/env bash
# The LeNet figures of "Looking inside" (docs/course-notes.md), from trained mnist_lenet and cifar_lenet runs:
#
#     export DEEPCOURSE_DATA=/path/to/data          # mnist/ and cifar10/, as for training
#     deepcourse run recipes/mnist_lenet.toml       # the shipped recipes; each prints its run directory
#     deepcourse run recipes/cifar_lenet.toml
#     docs/img/looking-inside/make_cnn_figures.sh runs/mnist_lenet/<id> runs/cifar_lenet/<id>
#
# Every step is one of the chapter's commands: `evaluate --write-predictions` (to find the mistakes), the
# validation images saved by validation_images.py, `explain` on them, `report`, and `lr-find` on each recipe.
# The chosen PNGs are copied next to this script under the names the chapter links. The image ids are the
# chapter's (mistakes of its runs); a run of your own makes other mistakes: pick yours from the CSV.
# Set DEEPCOURSE (default: deepcourse on PATH) and PYTHON (default: python) to the environment to use.
set -euo pipefail

if [ $# -ne 2 ] || [ ! -f "$1/recipe.toml" ] || [ ! -f "$2/recipe.toml" ]; then
    echo "usage: $0 MNIST_RUN_DIR CIFAR_RUN_DIR   (finished mnist_lenet and cifar_lenet runs)" >&2
    exit 2
fi
if [ -z "${DEEPCOURSE_DATA:-}" ]; then
    echo "$0: set DEEPCOURSE_DATA to the folder holding mnist/ and cifar10/" >&2
    exit 2
fi
MNIST=${1%/}
CIFAR=${2%/}
DC=${DEEPCOURSE:-deepcourse}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

$DC evaluate "$MNIST" --write-predictions "$WORK/mnist_val.csv" > /dev/null
$DC evaluate "$CIFAR" --write-predictions "$WORK/cifar_val.csv" > /dev/null
echo "validation mistakes, most confident first (id,gold,predicted,probability):"
for f in "$WORK/mnist_val.csv" "$WORK/cifar_val.csv"; do
    awk -F, 'NR > 1 && $2 != $3' "$f" | sort -t, -k4 -gr | awk 'NR <= 5'
done

$PY "$HERE/validation_images.py" "$MNIST" "$WORK/in" 4
$PY "$HERE/validation_images.py" "$CIFAR" "$WORK/in" 1273 45
$DC explain "$MNIST" "$WORK/in/val_00004_9.png" --target 9 -o "$WORK/mnist"
$DC explain "$CIFAR" "$WORK/in/val_01273_cat.png" --target cat -o "$WORK/cifar"
$DC explain "$CIFAR" "$WORK/in/val_00045_horse.png" -o "$WORK/cifar_horse"
$DC report "$MNIST"
$DC report "$CIFAR"
$DC lr-find "$REPO/recipes/mnist_lenet.toml" -o "$WORK/lr_mnist"
$DC lr-find "$REPO/recipes/cifar_lenet.toml" -o "$WORK/lr_cifar"

cp "$WORK/mnist/filters.png" "$HERE/mnist_filters.png"
cp "$WORK/mnist/01_val_00004_9_attribution.png" "$HERE/mnist_attribution_val00004.png"
cp "$WORK/mnist/01_val_00004_9_feature_maps.png" "$HERE/mnist_feature_maps_val00004.png"
cp "$WORK/lr_mnist/lr_find.png" "$HERE/mnist_lr_find.png"
cp "$WORK/cifar/filters.png" "$HERE/cifar_filters.png"
cp "$WORK/cifar/01_val_01273_cat_attribution.png" "$HERE/cifar_attribution_val01273.png"
cp "$WORK/cifar/01_val_01273_cat_feature_maps.png" "$HERE/cifar_feature_maps_val01273.png"
cp "$WORK/cifar_horse/01_val_00045_horse_attribution.png" "$HERE/cifar_attribution_val00045.png"
cp "$WORK/lr_cifar/lr_find.png" "$HERE/cifar_lr_find.png"
for fig in confusion_matrix per_class lr accuracy grad_norm; do
    cp "$CIFAR/report/$fig.png" "$HERE/cifar_$fig.png"
done
echo "copied into $HERE"
