#!/usr/bin/env bash
# Stops with one clear message when a tool the local stack needs is missing.
set -euo pipefail
missing() {
  echo "error: $1 is missing. Install it with: $2" >&2
  exit 1
}
command -v gcloud >/dev/null 2>&1 || missing "the gcloud CLI" \
  "sudo apt-get install google-cloud-cli (see https://cloud.google.com/sdk/docs/install)"
command -v java >/dev/null 2>&1 || missing "Java (17 or newer, for the emulators)" \
  "sudo apt-get install openjdk-17-jre-headless"
root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
[ -d "$root/platform/pubsub-emulator" ] || missing "the Pub/Sub emulator" \
  "sudo apt-get install google-cloud-cli-pubsub-emulator (or: gcloud components install pubsub-emulator beta)"
[ -d "$root/platform/cloud-firestore-emulator" ] || missing "the Firestore emulator" \
  "sudo apt-get install google-cloud-cli-firestore-emulator (or: gcloud components install cloud-firestore-emulator)"
