#!/usr/bin/env bash
# The BiLSTM-CRF figures of "Looking inside" (docs/course-notes.md), from a trained ner_bilstm_crf run:
#
#     export DEEPCOURSE_DATA=/path/to/data          # conll2003/ and glove/, as for training
#     deepcourse run recipes/ner_bilstm_crf.toml    # the shipped recipe; prints the run directory
#     docs/img/looking-inside/make_ner_figures.sh runs/ner_bilstm_crf/<id>
#
# It runs `deepcourse explain` on two sentences (CRF transitions, tag marginals, 5-best paths, word saliency) and
# `deepcourse report` (the entity-type confusion, on the validation split: the data must be there), copies the
# chosen PNGs next to this script under the names the chapter links, and prints the n-best tables that the chapter
# quotes. The explain output is left in RUN_DIR/explain-docs/{1,2}, the report in RUN_DIR/report.
# Set DEEPCOURSE to the command to use (default: deepcourse on PATH).
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/recipe.toml" ]; then
    echo "usage: $0 RUN_DIR   (a finished ner_bilstm_crf run: the folder holding recipe.toml)" >&2
    exit 2
fi
if [ -z "${DEEPCOURSE_DATA:-}" ]; then
    echo "$0: set DEEPCOURSE_DATA to the folder holding conll2003/ (the report evaluates the validation split)" >&2
    exit 2
fi
RUN=${1%/}
DC=${DEEPCOURSE:-deepcourse}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$RUN/explain-docs"

# sentence 1: a person's first name the tagger is unsure of; sentence 2: a city that is also a government, and a
# bank whose last word is a country. One call each, so that --target picks the entity whose saliency is shown.
$DC explain "$RUN" "Alice Smith of Acme Corp flew from Paris to Berlin on Monday morning ." \
    --target "Alice Smith" --nbest 5 -o "$OUT/1"
$DC explain "$RUN" "Washington said the Bank of England would act ." \
    --target "Bank of England" --nbest 5 -o "$OUT/2"
$DC report "$RUN"

for f in "$OUT/1/01_saliency_ner_1.png" "$OUT/2/01_saliency_ner_1.png"; do
    if [ ! -f "$f" ]; then
        echo "$0: this run does not predict the entity $f is about (see $(dirname "$f")/explain.md): choose" \
             "another --target above, and say so in the chapter" >&2
        exit 1
    fi
done
cp "$OUT/1/transitions_ner.png" "$HERE/ner_transitions.png"
cp "$OUT/1/01_marginals_ner.png" "$HERE/ner_marginals.png"
cp "$OUT/1/01_saliency_ner_1.png" "$HERE/ner_saliency_alice_smith.png"
cp "$OUT/2/01_saliency_ner_1.png" "$HERE/ner_saliency_bank_of_england.png"
cp "$RUN/report/type_confusion_ner.png" "$HERE/ner_type_confusion.png"
echo "copied into $HERE: ner_transitions.png ner_marginals.png ner_saliency_alice_smith.png" \
     "ner_saliency_bank_of_england.png ner_type_confusion.png"
echo
echo "The n-best tables (from $OUT/{1,2}/explain.md):"
awk 'FNR == 1 {if (on) print ""; on = 0; seen = 0} /best tag sequences/ {on = 1} on && /^$/ && seen {on = 0; seen = 0; print ""} on {print; if (/^\|/) seen = 1}' \
    "$OUT/1/explain.md" "$OUT/2/explain.md"
