# Contributor shortcuts. `just --list` shows them all.

# Run every test (starts a throwaway Postgres unless DATABASE_URL is set).
test:
    cargo test --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Start the whole system locally: embedded Postgres under ./.hodei/, API, scheduler, two workers.
dev:
    cargo build --workspace --bins
    target/debug/hodei dev

# Regenerate the committed OpenAPI document after an intended API change.
openapi:
    cargo run --quiet --bin hodei -- openapi > openapi/openapi.json

# Submission benchmarks against HODEI_DATABASE_URL (a scratch database).
bench-submit:
    cargo build --release --bin hodei --bin hodei-bench
    ./target/release/hodei-bench submit --mode single --rate 500 --duration 20
    ./target/release/hodei-bench submit --mode batch --concurrency 4 --batch-size 1000 --duration 20

# Everything CI does.
ci:
    bash .ci/run
