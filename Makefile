# Two commands for a new user (Python 3.11):
#   make run    create .venv, install, start the web app on the built-in digits
#   make test   create/update .venv with the test tools, install chromium, run every test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test clean-venv

$(VENV)/.app-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.app-installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

run: $(VENV)/.app-installed
	$(VENV)/bin/streamlit run app/main.py --server.port $(PORT)

test: $(VENV)/.test-installed
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-dejavu-core; }
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
