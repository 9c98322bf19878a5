#!/usr/bin/env bash
# The project's test command: unit tests, golden tests against the original Wyng's archives,
# round-trip, crash and hostile-input tests. Tests that need root or loop devices skip on a
# machine without them, except under CI=true where they must run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked --all-targets "$@"
