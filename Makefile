# genrelab — the two commands a fresh machine needs are `make reproduce` and `make test`.
CARGO ?= cargo
BIN := target/release/genrelab

.PHONY: reproduce test lint bench accuracy-curve verify check-lock build clean-artifacts

build:
	$(CARGO) build --release

## Run the whole pipeline on the embedded synthetic corpus (generated on first run), time the trained models
## inference on this machine (the efficiency table; never cached), verify the store, and copy the report to
## reports/latest/.
reproduce: build
	$(BIN) run
	$(BIN) efficiency
	$(BIN) verify
	@$(BIN) export report --to reports/latest >/dev/null
	@echo; sed -n '/^## Headline/,/^Source/p' reports/latest/report.md | grep -v '^Source'
	@echo "report: reports/latest/report.html (and report.md)"

## Format check, lints, unit and end-to-end tests (the engine's toy stages are compiled in for the tests).
## Built in release: the tests run faster, and `make reproduce` afterwards reuses every compiled dependency
## instead of building the whole tree a second time in another profile.
test: lint
	$(CARGO) test --release --workspace --features toy-stages

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features toy-stages -- -D warnings

## Reproduce the default pipeline and fail if any digest differs from the committed pipeline.lock, or if any
## leakage invariant fails on the result (CI runs it).
check-lock: reproduce
	$(BIN) audit
	@git diff --exit-code -- pipeline.lock || { echo "pipeline.lock changed: a stage's outputs differ from the committed ones (or a stage's code changed and the lock was not re-committed)"; exit 1; }
	@echo "check-lock: every digest matches the committed pipeline.lock"

## Benchmarks, each printed as a ratio against a baseline measured in the same script.
bench:
	bash bench/status.sh
	bash bench/features.sh
	$(CARGO) bench --bench conv
	$(CARGO) bench --bench train_step
	bash bench/scale_out.sh

## The default U-Net trained for 30 epochs instead of 5: the validation curve behind the README's accuracy
## figures (about 12 minutes on 2 cores; not part of `bench`).
accuracy-curve:
	bash bench/accuracy_curve.sh

## Re-hash every artifact pipeline.lock names, then re-run every stage in a scratch store and compare digests.
verify: build
	$(BIN) verify --rerun

clean-artifacts:
	rm -rf artifacts
