# Vigil — the two commands of the README:
#   make demo   runs the whole system on this machine with sample devices
#   make test   starts or installs what the tests need, then vets and tests everything
#
# Both install what they need from Debian's apt, the Go module proxy and npm; nothing has to
# be installed by hand first.

SHELL := /usr/bin/env bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Short fuzz runs of every parser that faces devices or the network, run by `make test`
# ("package:FuzzName"). `make fuzz FUZZTIME=10m` runs them longer.
# The default budget is a count of executions, not a duration: with a duration, Go 1.26's
# fuzz coordinator can fail a target with a bare "context deadline exceeded" (and no failing
# input) when a starved worker misses the end of -fuzztime (golang/go#75804, fixed in Go 1.27).
# A count has no deadline to race, so a failure of `make fuzz` is always a real finding.
FUZZ_TARGETS ?= devices/envelope:FuzzOpen devices/envelope:FuzzParseMessages devices/envelope:FuzzVerifierMatchesStdlib \
	devices/mqttwire:FuzzParseUpTopic devices/mqttwire:FuzzParseReply \
	devices/sdk:FuzzVerifyReceipt devices/sdk:FuzzParseErrorAnswer \
	audit/chain:FuzzVerifyPack audit/leaf:FuzzDecodeEvent audit/witness:FuzzParseRequest keys:FuzzEnvelopeDecrypt \
	core/rules:FuzzNEWS2 core/rules:FuzzRuleDefinition \
	core:FuzzVerifyWebhook core:FuzzCheckWebhookURL \
	server:FuzzCheckJSON \
	interop/hl7:FuzzParse interop/hl7:FuzzEscape interop/mllp:FuzzReadFrame interop/fhir:FuzzParseSearch interop/fhir:FuzzParseScopes interop/fhir/subscription:FuzzParse \
	auth:FuzzCredentialParsers
FUZZTIME ?= 50000x
# Test results and validation evidence (git-ignored): `make unit` and `make fuzz` write the
# go test -json streams here, `make validate` reads them.
CI_DIR := .vigil/ci
# The offline OSV database of the vulnerabilities gate (govulncheck runs with no network).
# CI keeps one beside the repository; elsewhere pass VULNDB=path/to/osv.
VULNDB ?= ../shared/vulndb/osv

.PHONY: all build bench-build demo test vet unit fuzz validate release services tools clean-testdbs help portal-assets

all: build

help:
	@echo "make demo   - run Vigil with a private database and sample devices (Ctrl-C stops it)"
	@echo "make test   - start/install PostgreSQL, Mosquitto, Vault, chromium; go vet; go test -race; short fuzz"
	@echo "make build  - build bin/vigil (the shipped binary)"
	@echo "make bench-build - build bin/vigil-bench (the load generators, docs/benchmarks.md)"
	@echo "make fuzz   - run the fuzz targets for FUZZTIME each (default $(FUZZTIME))"
	@echo "make validate - run the validation gates on the results of make unit and make fuzz"
	@echo "make release  - a signed release with its IEC 62304/HIPAA evidence into DIST (default dist/)"

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/vigil ./cmd/vigil

# The load generators are a binary of their own: the shipped vigil carries none.
bench-build:
	$(GO) build -trimpath -o $(BIN)/vigil-bench ./cmd/vigil-bench

# The demo needs PostgreSQL's server binaries (for its private cluster) unless
# VIGIL_DATABASE_URL points at a server.
demo: build
	@if [ -z "$${VIGIL_DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing Debian's postgresql (for the demo's private cluster)"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; \
	fi
	$(BIN)/vigil demo $(DEMO_ARGS)

services:
	bash .ci/ensure-postgres
	bash .ci/ensure-mosquitto
	bash .ci/ensure-interop
	bash .ci/ensure-poppler
	bash .ci/ensure-chromium
	bash .ci/ensure-haproxy

# Test-time tools built from the Go module proxy into bin/ (cached; rebuilt when their
# go.sum changes): the Vault dev server and Trillian's own servers for the external mode;
# transparency-dev's omniwitness (tools/omniwitness/build.sh: go install
# github.com/transparency-dev/witness/cmd/omniwitness@v0.0.0-20260720115447-2e1c6971d19e with
# GOBIN=$(CURDIR)/bin), the independent witness of the audit tests; and the external FHIR
# validator from npm into interop/fhir/validator/node_modules (git-ignored, pinned by its
# package-lock.json).
tools:
	@for s in tools/*/build.sh; do [ -f "$$s" ] && bash "$$s" || exit 1; done

# The portal's front-end files (docs/portal.md): after changing a version in
# portal/web/package.json and running `npm install` there, copy the pinned packages' files
# into portal/web/vendor (committed, embedded by go:embed) and commit them; the portal's
# TestVendoredAssets checks them against the npm tarballs of the lock file's integrity.
portal-assets:
	bash tools/portal-web/build.sh
	cd portal/web && cp node_modules/htmx.org/dist/htmx.min.js node_modules/uplot/dist/uPlot.iife.min.js \
		node_modules/uplot/dist/uPlot.min.css vendor/

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# Test databases left by killed test runs, and templates of earlier migration sets, are
# dropped first (the current template is made again once, in about a second).
TESTDB_ADMIN = $${VIGIL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
clean-testdbs:
	@psql "$(TESTDB_ADMIN)" -Atqc \
		"SELECT datname FROM pg_database WHERE datname LIKE 'vigil_t\_%' OR datname LIKE 'vigil_tmpl\_%'" 2>/dev/null | while read -r db; do \
		psql "$(TESTDB_ADMIN)" -qc "ALTER DATABASE $$db WITH is_template false" >/dev/null 2>&1; \
		psql "$(TESTDB_ADMIN)" -qc "DROP DATABASE IF EXISTS $$db WITH (FORCE)" >/dev/null 2>&1 || true; done

# The go test -json stream is kept in $(CI_DIR)/go-test.json (the traceability matrix and the
# validation gates read it); four packages at a time, eight tests at a time within one
# (docs/development.md: tests wait on PostgreSQL more than they compute); the log shows one line per package and every failing test's output.
unit:
	@mkdir -p $(CI_DIR)
	set -o pipefail; VIGIL_REQUIRE_VAULT=1 VIGIL_REQUIRE_TRILLIAN_BINS=1 VIGIL_REQUIRE_OMNIWITNESS=1 VIGIL_REQUIRE_INTEROP_TOOLS=1 VIGIL_REQUIRE_BROWSER=1 \
		$(GO) test -json -race -count=1 -p 4 -parallel 8 -timeout 12m ./... 2>&1 | $(GO) run ./tools/testlog -o $(CI_DIR)/go-test.json

fuzz:
	@mkdir -p $(CI_DIR); : > $(CI_DIR)/fuzz.json
	@set -o pipefail; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -json -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg 2>&1 | \
			$(GO) run ./tools/testlog -a -o $(CI_DIR)/fuzz.json || exit 1; done

# The validation gates, each reported by name (docs/quality.md): on the test run of `make unit`,
# the fuzz runs of `make fuzz`, the offline vulnerability database VULNDB.
validate: build
	$(BIN)/vigil validate --vulndb $(VULNDB) --test-json $(CI_DIR)/go-test.json --fuzz-json $(CI_DIR)/fuzz.json \
		--binary $(BIN)/vigil --out .vigil/validate

test: services tools clean-testdbs vet unit fuzz validate

# A signed release with its evidence pack into $(DIST) (docs/quality.md), from the results of
# make unit and make fuzz. Needs VIGIL_DATABASE_URL (the audit log that records the release)
# and the keys (VIGIL_VAULT_ADDR, or VIGIL_KEYRING_PASSPHRASE for the local key ring).
DIST ?= dist
release: build
	$(BIN)/vigil release --out $(DIST) --vulndb $(VULNDB) --version $(VERSION)
