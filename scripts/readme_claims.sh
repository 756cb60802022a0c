#!/usr/bin/env bash
# Measurements quoted beside the studies' declared claims (docs/studies.md), from the committed
# runs' metrics.json files: run each study's config first (see docs/studies.md).
#   bash scripts/readme_claims.sh [wikitext-laptop|wikitext-controls|quickstart|curation|sampling-bias|fresh-threshold|blue-cats|internet|internet-matched]
# Every study states its claims through `lmcollapse claims RUN --quote` (its
# configs/<experiment>.claims.yaml, checked by scripts/check_claims.py); the paired tests here
# are the values and changes the pages quote beside those claims, not claims of their own.
# Each `lmcollapse compare` call is one family: its p-values are Holm-corrected together.
set -euo pipefail
cd "$(dirname "$0")/.."
cmp() { lmcollapse compare "$@"; echo; }
want=${1:-all}

if [[ $want == all || $want == wikitext-laptop ]]; then
  # beside the declared claims (lmcollapse claims runs/wikitext-laptop): what replace and
  # accumulate write, generation 4 against generation 0 (values and per-seed changes)
  cmp runs/wikitext-laptop --pair replace/gen_0 replace --pair accumulate/gen_0 accumulate \
    --raw --metrics ref_ppl_p50,word_types,word_types_known,word_types_1,word_types_2,word_types_3,word_types_4,word_usage_1,word_usage_4,mauve
fi

if [[ $want == all || $want == wikitext-controls ]]; then
  # each policy and control against generation 0 (shared), packed and not
  zero=()
  for c in replace replace-human accumulate accumulate-human; do
    for pk in false true; do zero+=(--pair "$c@pack=$pk/gen_0" "$c@pack=$pk"); done
  done
  cmp runs/wikitext-controls "${zero[@]}" --metrics perplexity
  # how much of each policy's change since generation 0 its control shows (B/A - 1 of the
  # changes; the p of the difference in differences), packed and not
  ctl=()
  for pk in false true; do
    ctl+=(--pair "replace@pack=$pk" "replace-human@pack=$pk"
          --pair "accumulate@pack=$pk" "accumulate-human@pack=$pk")
  done
  cmp runs/wikitext-controls "${ctl[@]}" --change --metrics perplexity
  # what packing changes: each cell packed against the same cell unpacked (generation 4)
  pk=()
  for c in replace replace-human accumulate accumulate-human; do pk+=(--pair "$c@pack=false" "$c@pack=true"); done
  cmp runs/wikitext-controls "${pk[@]}" --metrics perplexity
  # the ordering, unpacked and packed
  cmp runs/wikitext-controls --pair accumulate@pack=false replace@pack=false \
    --pair accumulate@pack=true replace@pack=true --metrics perplexity
fi

if [[ $want == all || $want == quickstart ]]; then
  cmp runs/quickstart --pair mix-0.1 accumulate --pair replace mix-0.1 \
    --metrics perplexity,excess_nats_per_word,kl_human_corpus
  cmp runs/quickstart --pair accumulate/gen_0 accumulate --pair mix-0.1/gen_0 mix-0.1 \
    --pair replace/gen_0 replace --metrics perplexity
fi

if [[ $want == all || $want == curation ]]; then
  pairs=()
  for p in replace accumulate; do
    for c in gen0-bestof4 gen0-best50 oracle-best50; do pairs+=(--pair "$p" "$p-$c"); done
  done
  cmp runs/curation "${pairs[@]}" --pair replace accumulate \
    --metrics perplexity,excess_nats_per_word,tail_mass_ratio,kl_human_corpus,self_bleu
  gen0=()
  for p in replace accumulate; do
    for c in "" -gen0-bestof4 -gen0-best50 -oracle-best50; do gen0+=(--pair "$p$c/gen_0" "$p$c"); done
  done
  cmp runs/curation "${gen0[@]}" --metrics perplexity
fi

if [[ $want == all || $want == sampling-bias ]]; then
  base='replace@temperature=1.0,top_p=1.0'
  pairs=()
  for c in 'temperature=0.7,top_p=1.0' 'temperature=1.0,top_p=0.9' 'temperature=0.7,top_p=0.9'; do
    pairs+=(--pair "$base" "replace@$c")
  done
  cmp runs/sampling-bias "${pairs[@]}" --raw --metrics tail_mass_ratio,tail_type_survival,self_bleu,distinct_4,kl_human_corpus,excess_nats_per_word,perplexity
  cmp runs/sampling-bias "${pairs[@]}" --raw --change --metrics tail_mass_ratio,self_bleu
fi

if [[ $want == all || $want == fresh-threshold ]]; then
  cmp runs/fresh-threshold --pair 'fresh@r=1.0' 'fresh@r=0.75' --pair 'fresh@r=0.75' 'fresh@r=0.5' \
    --pair 'fresh@r=0.5' 'fresh@r=0.25' --pair 'fresh@r=0.25' 'fresh@r=0.0' \
    --metrics excess_nats_per_word,perplexity
  cmp runs/fresh-threshold --pair 'fresh@r=0.75/gen_0' 'fresh@r=0.75' \
    --pair 'fresh@r=0.0/gen_0' 'fresh@r=0.0' --metrics perplexity
fi

if [[ $want == all || $want == blue-cats ]]; then
  pairs=(--pair replace/gen_0 replace --pair mix-0.1/gen_0 mix-0.1
    --pair accumulate/gen_0 accumulate --pair mix-0.1 accumulate --pair replace accumulate
    --pair replace mix-0.1)
  cmp runs/blue-cats "${pairs[@]}" --metrics minority_form_share
  cmp runs/blue-cats "${pairs[@]}" --metrics minority_share,precision,recall,density,coverage,frechet_distance
fi

if [[ $want == all || $want == internet ]]; then
  # measurements beside the declared claims (lmcollapse claims runs/internet): what 40%
  # synthetic crawls cost each participant at generation 4, and which loses most of the tail
  cmp runs/internet --pair human-only.sample web.sample --pair human-only.cold web.cold \
    --pair human-only.nucleus web.nucleus --metrics perplexity,excess_nats_per_word
  cmp runs/internet --pair web.sample web.cold --pair web.sample web.nucleus \
    --pair web.nucleus web.cold --change --metrics perplexity,excess_nats_per_word,kl_human_corpus
fi

if [[ $want == all || $want == internet-matched ]]; then
  # measurements beside the declared claims (lmcollapse claims runs/internet-matched): the
  # raw divergence between participants and the floor within one, from generation 1 to 4
  # and web against human-only at generation 4
  cmp runs/internet-matched --pair matched-web/gen_1 matched-web \
    --pair matched-human-only/gen_1 matched-human-only --pair matched-human-only matched-web \
    --raw --metrics jsd_between,jsd_within
fi
