#!/usr/bin/env bash
# Long runs of the fuzz harnesses (CI runs each with proptest's default 256 cases).
#
#   scripts/fuzz.sh [SECONDS] [FILTER]
#
# Runs every target (a parser facing the network or a file) for about SECONDS (default 600),
# shared among the target's properties, and prints the cases run and the time each took. The
# cases are calibrated: a short run measures each property's pace, then the long run asks for
# as many cases as fit. FILTER (a grep pattern) picks targets by name, so two runs on
# disjoint halves use two cores. A failure stops the run with proptest's minimal input, which
# proptest also saves under the crate's proptest-regressions/ folder.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
filter=${2:-.}

# target | cargo arguments | properties (space-separated test names)
targets=(
  "gateway-messages|-p arbor-proto --test fuzz|arbitrary_text_is_answered protocol_shaped_json_is_answered"
  "filters|-p arbor-actors --test fuzz|filters_parse_or_are_refused"
  "cross-node-messages|-p arbor-actors --test fuzz|arbitrary_bytes_decode_or_are_refused mutated_messages_decode_or_are_refused"
  "link-messages|-p arbor-node --lib|link::messages::fuzz::arbitrary_bytes_decode_or_are_refused link::messages::fuzz::mutated_heartbeats_decode_or_are_refused"
  "raft-entries-snapshots-frames|-p arbor-scheduler --test fuzz|arbitrary_entries_decode_or_are_refused mutated_entries_decode_or_are_refused transport_frames_are_read_or_refused"
  "cluster-toml|-p arbor-node --test fuzz|cluster_toml_is_parsed_or_refused"
  "deployment-files|-p arbor-node --test fuzz|deployment_files_are_parsed_or_refused"
  "token-files|-p arbor-node --test fuzz|token_files_are_parsed_or_refused"
  "gguf|-p arbor-kernels --lib|gguf::tests::fuzz::arbitrary_bytes_parse_or_are_refused gguf::tests::fuzz::a_mutated_llama_file_parses_or_is_refused gguf::tests::fuzz::built_files_parse_or_are_refused"
  "ingest-jsonl|-p arbor-cli --bin arbor|commands::ingest::tests::jsonl_fuzz::lines_parse_or_say_what_is_wrong"
)

# The test binaries are built first and copied aside, so that editing or building the
# project while a long run goes on changes nothing under it.
bin_dir=$(mktemp -d)
trap 'rm -rf "$bin_dir"' EXIT

# The test binary that `cargo test ARGS` runs, copied into $bin_dir; prints its path.
binary() {
  local args=$1 exe
  # shellcheck disable=SC2086
  exe=$(cargo test $args --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null) | .executable' |
    tail -n 1)
  cp "$exe" "$bin_dir/"
  echo "$bin_dir/$(basename "$exe")"
}

# Runs one property with CASES cases; prints the seconds it took.
run_cases() {
  local exe=$1 name=$2 cases=$3 start end
  start=$(date +%s.%N)
  PROPTEST_CASES=$cases "$exe" --exact "$name" --test-threads 1 -q >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

for entry in "${targets[@]}"; do
  IFS='|' read -r target args props <<<"$entry"
  echo "$target" | grep -q -- "$filter" || continue
  read -r -a names <<<"$props"
  exe=$(binary "$args")
  share=$(echo "$secs / ${#names[@]}" | bc -l)
  total_cases=0
  total_secs=0
  for name in "${names[@]}"; do
    # A short run to learn the pace, then as many cases as fit in the property's share.
    probe=20000
    took=$(run_cases "$exe" "$name" "$probe")
    cases=$(echo "$probe * $share / ($took + 0.01)" | bc)
    took=$(run_cases "$exe" "$name" "$cases")
    printf '%-32s %-62s %12d cases %8.1f s\n' "$target" "${name##*::}" "$cases" "$took"
    total_cases=$((total_cases + cases))
    total_secs=$(echo "$total_secs + $took" | bc)
  done
  printf '%-32s %-62s %12d cases %8.1f s\n' "$target" "(all)" "$total_cases" "$total_secs"
done
