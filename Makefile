# SeatSync: `make run` starts it on the embedded default; `make test` runs the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
SIM_PORT ?= 8099
export FLASK_APP := wsgi
export SEATSYNC_INSTANCE ?= $(CURDIR)/instance
# The embedded demo talks to the local PSA simulator, never to a real PSA.
DEMO_ENV := PSA_DEV_HOSTS=127.0.0.1:$(SIM_PORT) CW_CLIENT_ID=seatsync-demo-client \
  AUTOTASK_ZONE_URL=http://127.0.0.1:$(SIM_PORT)/atservicesrest/v1.0/zoneInformation

.PHONY: setup assets run test lint bench clean

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(BIN)/activate

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# Front-end packages come from the npm registry (pinned in package-lock.json) and are served by the app.
assets: node_modules/.package-lock.json
	mkdir -p webapp/static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js webapp/static/vendor/
	cp node_modules/@picocss/pico/css/pico.min.css webapp/static/vendor/

setup: $(BIN)/activate assets

run: setup
	$(BIN)/flask db upgrade
	$(BIN)/flask seed-demo
	@$(BIN)/flask create-admin admin@seatsync.local --password demo-admin-password >/dev/null
	@echo ""
	@echo "  SeatSync:      http://127.0.0.1:$(PORT)   sign in as admin@seatsync.local / demo-admin-password"
	@echo "  PSA simulator: http://127.0.0.1:$(SIM_PORT) (credentials in README.md, 'The demo')"
	@echo ""
	$(BIN)/python -m psa_sim --port $(SIM_PORT) --seed demo & \
	  SIM=$$!; trap "kill $$SIM" EXIT INT TERM; \
	  $(DEMO_ENV) $(BIN)/flask serve --port $(PORT)

# Browser tests need Debian's chromium; install it when we can (root) and it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "chromium is missing: install Debian's chromium package"; exit 1; }

test: setup chromium
	$(BIN)/ruff check webapp psa_sim tests bench worker.py wsgi.py
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check webapp psa_sim tests bench worker.py wsgi.py

# Each benchmark prints its figures against the targets of PRODUCT.md §7 (PostgreSQL and Redis needed).
bench: setup
	$(BIN)/python -m bench.counts
	$(BIN)/python -m bench.mapping_page
	$(BIN)/python -m bench.polling
	$(BIN)/python -m bench.sync

clean:
	rm -rf $(VENV) node_modules webapp/static/vendor instance
