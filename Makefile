# Two commands on a fresh machine with Python 3.11+:
#   make run    set up, migrate the embedded SQLite database and start the broker on 127.0.0.1:8080
#   make test   set up and run the whole test suite (SQLite, and PostgreSQL when configured)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEV    := var/dev

.PHONY: install run test bench bench-quick clean schema

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(DEV)/sts.yaml: | install
	$(BIN)/sts init $(DEV) --dev

run: export STS_DEV_MODE = true
run: install $(DEV)/sts.yaml
	STS_KEK_FILE=$(DEV)/kek $(BIN)/sts db upgrade
	@echo ""
	@echo "Broker starting on http://127.0.0.1:8080 (configuration: $(DEV)/sts.yaml)."
	@echo "Try an exchange from another terminal:"
	@echo "  TOKEN=\$$($(BIN)/sts dev mint --config $(DEV)/sts.yaml --sub agent-1)"
	@echo "  curl -s http://127.0.0.1:8080/token \\"
	@echo "    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\"
	@echo "    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\"
	@echo "    -d subject_token=\$$TOKEN -d audience=https://vector.example.com -d scope=read"
	@echo ""
	STS_KEK_FILE=$(DEV)/kek $(BIN)/sts serve --config $(DEV)/sts.yaml --host 127.0.0.1 --port 8080

# The configuration's JSON Schema in docs/ (tests/unit/test_config_schema.py holds it current).
schema: install
	$(BIN)/sts config schema --out docs/sts-config.schema.json
	$(BIN)/sts config schema --part --out docs/sts-config-part.schema.json

# Two processes (pytest-xdist), whole files each: most tests wait on servers and subprocesses,
# so two cores run the suite in about half the time. Test ids are stable across processes.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) var .pytest_cache
