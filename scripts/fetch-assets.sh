#!/usr/bin/env bash
# Copies the model, labels and test data from ../shared/assets (or $CLASSIFIER_ASSETS_SRC) into the
# git-ignored places the build and the tests read them from, checking every file's sha256 against
# scripts/assets.sha256. These files are data we must not commit.
#   assets/                 what build.rs embeds into the binary (MobileNet v1 + labels)
#   fixtures/shared/        test-only data (photos, golden outputs, the second model)
# Idempotent: files already in place with the right hash are left alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${CLASSIFIER_ASSETS_SRC:-$root/../shared/assets}"
manifest="$root/scripts/assets.sha256"

dest_for() {
  case "$1" in
    mobilenet_v1_1.0_224/*|imagenet_class_index.json) echo "$root/assets/$1" ;;
    *) echo "$root/fixtures/shared/$1" ;;
  esac
}

copied=0; kept=0
while read -r sum rel; do
  dst="$(dest_for "$rel")"
  if [[ -f "$dst" ]] && [[ "$(sha256sum "$dst" | cut -d' ' -f1)" == "$sum" ]]; then
    kept=$((kept + 1)); continue
  fi
  if [[ ! -f "$src/$rel" ]]; then
    echo "error: $src/$rel is missing; set CLASSIFIER_ASSETS_SRC to a copy of shared/assets" >&2
    exit 1
  fi
  got="$(sha256sum "$src/$rel" | cut -d' ' -f1)"
  if [[ "$got" != "$sum" ]]; then
    echo "error: $src/$rel has sha256 $got, expected $sum" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$dst")"
  cp "$src/$rel" "$dst.tmp" && mv "$dst.tmp" "$dst"
  copied=$((copied + 1))
done < "$manifest"
echo "assets: $copied copied, $kept already in place (checked against scripts/assets.sha256)"
