#!/usr/bin/env bash
# Inference figures of the benchmark runs, every backend beside the others, in one command:
# throughput (`nlpseq bench --run`, medians of alternating rounds), served sentiment
# (scripts/load_test.py), peak memory of `predict` and `evaluate` over 10,000 and 1,000,000
# input lines, and each backend's dev metric. Prints one JSON object per measurement.
#
#   NLPSEQ_CORPORA=/path/to/corpora bash scripts/inference_figures.sh RUNS_DIR [OUT_DIR]
#
# RUNS_DIR holds trained runs named sst2, conll, shakespeare and multi30k (any training
# budget: it fixes their size); OUT_DIR (default: a temporary folder) receives the inputs.
set -eu
runs=${1:?usage: inference_figures.sh RUNS_DIR [OUT_DIR]}
out=${2:-$(mktemp -d)}
corpora=${NLPSEQ_CORPORA:?set NLPSEQ_CORPORA}
seconds=${SECONDS_PER_BENCH:-25}  # per throughput figure, all its backends together
lines_cap=${INPUT_LINES:-100000000}  # a quick try: INPUT_LINES=50 SECONDS_PER_BENCH=2 ...
mkdir -p "$out"

cut -f2 "$corpora/sentiment/sst2/glue_dev.tsv" | tail -n +2 | head -n "$lines_cap" \
  > "$out/sst2_dev.txt"
zcat "$corpora/translation/multi30k/val.en.gz" | head -n "$lines_cap" > "$out/val.en"
conll_dev="$corpora/ner/conll2003/dev.txt"
backends="--backend torch --backend onnx --backend int8 --backend bf16"

nlpseq bench --run "$runs/sst2" --input "$out/sst2_dev.txt" $backends --seconds "$seconds" --json
nlpseq bench --run "$runs/conll" --input "$conll_dev" $backends --seconds "$seconds" --json
nlpseq bench --run "$runs/shakespeare" $backends --seconds "$seconds" --json
# the pipeline computes in bfloat16 already, so bf16 is torch here
nlpseq bench --run "$runs/multi30k" --input "$out/val.en" --beam 5 --backend torch \
  --backend onnx --backend int8 --seconds "$((seconds * 4))" --json

for backend in torch bf16 onnx; do
  python scripts/load_test.py --run "$runs/sst2" --backend "$backend" --threads 1 \
    --input "$out/sst2_dev.txt" --requests 20000 --time-limit "$((seconds * 6 / 10))" --json
done

repeat() {  # the lines of file $1 (after $3 header lines, written once) cycled to $2 lines
  python -c 'import itertools, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
head, body = lines[: int(sys.argv[3])], lines[int(sys.argv[3]):]
print("\n".join(head + list(itertools.islice(itertools.cycle(body), int(sys.argv[2])))))' "$@"
}

# Peak memory: the same lines repeated to 10,000 and to 1,000,000.
for lines in ${MEMORY_LINES:-10000 1000000}; do
  repeat "$corpora/sentiment/sst2/glue_dev.tsv" "$lines" 1 > "$out/sst2_$lines.tsv"
  cut -f2 "$out/sst2_$lines.tsv" | tail -n +2 > "$out/sst2_$lines.txt"
  repeat "$conll_dev" "$lines" 0 > "$out/conll_$lines.txt"
  for command in "predict $runs/sst2 --input $out/sst2_$lines.txt" \
                 "evaluate $runs/sst2 $out/sst2_$lines.tsv" \
                 "predict $runs/conll --input $out/conll_$lines.txt" \
                 "evaluate $runs/conll $out/conll_$lines.txt"; do
    kb=$( { /usr/bin/time -f %M nlpseq $command > /dev/null; } 2>&1 | tail -1)
    echo "{\"peak_rss_mb\": $((kb / 1024)), \"lines\": $lines, \"command\": \"nlpseq $command\"}"
  done
done

# Peak memory of evaluate for the char LM (Tiny Shakespeare's lines repeated) and for
# translation (Multi30k val repeated; greedy, which holds less per batch than beam search but
# the same for the corpus: its n-gram statistics and loss are summed as they come).
zcat "$corpora/translation/multi30k/val.de.gz" > "$out/val.de"
text_lines=${TEXT_MEMORY_LINES:-10000 1000000}
for lines in $text_lines; do
  repeat "$corpora/textgen/tinyshakespeare/input.txt" "$lines" 0 > "$out/shakespeare_$lines.txt"
  command="evaluate $runs/shakespeare $out/shakespeare_$lines.txt --dynamic-lr 0"
  kb=$( { /usr/bin/time -f %M nlpseq $command > /dev/null; } 2>&1 | tail -1)
  echo "{\"peak_rss_mb\": $((kb / 1024)), \"lines\": $lines, \"command\": \"nlpseq $command\"}"
done
for lines in ${PARALLEL_MEMORY_LINES:-10000 100000}; do
  repeat "$out/val.en" "$lines" 0 > "$out/val_$lines.en"
  repeat "$out/val.de" "$lines" 0 > "$out/val_$lines.de"
  for command in "evaluate $runs/multi30k $out/val_$lines.en $out/val_$lines.de --beam 1" \
                 "translate $runs/multi30k --input $out/val_$lines.en --beam 1"; do
    kb=$( { /usr/bin/time -f %M nlpseq $command > /dev/null; } 2>&1 | tail -1)
    echo "{\"peak_rss_mb\": $((kb / 1024)), \"lines\": $lines, \"command\": \"nlpseq $command\"}"
  done
done

for backend in torch onnx int8 bf16; do
  for run in "sst2 $corpora/sentiment/sst2/glue_dev.tsv" "conll $conll_dev"; do
    set -- $run
    echo "{\"backend\": \"$backend\", \"run\": \"$1\", \"dev\": $(nlpseq evaluate "$runs/$1" "$2" \
      --backend "$backend" --json 2>/dev/null)}"
  done
done
