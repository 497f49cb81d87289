# Two commands for a fresh machine with python3 and make:
#   make test   create .venv, install, run the whole suite (DATABASE_URL picks the database)
#   make demo   create .venv, migrate the test project on SQLite, seed demo orders and an
#               admin/admin superuser, serve the shop and its local Khalti sandbox on
#               http://127.0.0.1:8000/ (DEMO_ADDR=host:port to change; KHALTI_SECRET_KEY and
#               KHALTI_PUBLIC_KEY in the environment: Khalti's real sandbox instead)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=
DEMO_ADDR ?= 127.0.0.1:8000

# The extras `make test` installs: the test tools, and the driver DATABASE_URL needs.
ifneq (,$(filter postgres%,$(DATABASE_URL)))
TEST_EXTRAS := test,postgres
else ifneq (,$(filter mysql%,$(DATABASE_URL)))
TEST_EXTRAS := test,mysql
else
TEST_EXTRAS := test
endif

.PHONY: test demo docs bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The demo needs nothing but the app (the "demo" stamp installs no extra).
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet --editable .
	touch $@

# One stamp per set of extras: once installed, a re-run needs no network.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet --editable '.[$*]'
	touch $@

install: $(VENV)/.installed-$(TEST_EXTRAS)

# SKIP_RELIABILITY=1 leaves out the tests marked `reliability` (gunicorn with 4 workers
# against a fake Khalti: load, faults, killed workers); .ci/run always runs them.
test: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python -m pytest $(if $(SKIP_RELIABILITY),-m 'not reliability') $(PYTEST_ARGS)

demo: export DATABASE_URL = sqlite://
demo: export DJANGO_DEBUG = 1
demo: export DJANGO_DEMO = 1
demo: export DJANGO_DEMO_ADDR = $(DEMO_ADDR)
demo: $(VENV)/.installed-demo
	cd testproject && ../$(BIN)/python manage.py migrate --noinput
	cd testproject && ../$(BIN)/python manage.py seed_demo --url http://$(DEMO_ADDR)/
	cd testproject && ../$(BIN)/python manage.py runserver $(DEMO_ADDR)

# The documentation site: docs/_build/html/index.html (warnings are errors, as in
# tox -e docs). The state diagram needs Graphviz's dot (apt-get install graphviz).
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "Open docs/_build/html/index.html"

# The peer app `django-khalti` 1.0 (PyPI) for `make bench`, in a directory of its own
# that only the bench's peer server puts on its path (bench/peer/README.md).
BENCH_PEER := $(VENV)/bench-peer
$(BENCH_PEER)/.installed: | $(BIN)/python
	$(PIP) install --quiet --no-deps --target $(BENCH_PEER) 'django-khalti==1.0'
	touch $@

# The speed report (issues 7, 17 and 27): under gunicorn (4 workers x 8 threads each)
# against an HTTPS fake Khalti, the app on Django's default connections and on Django's
# psycopg pool, each beside its limit (bench/limit.py), a naive baseline and the peer
# django-khalti 1.0; CPU, WAL flushes and statements per verification; a py-spy profile of
# the app at 32 clients; queries, admin over 100k payments, khalti_reconcile. Prints the
# tables and writes bench/results.md. PostgreSQL at BENCH_DATABASE_URL (default
# postgres://root@127.0.0.1:5432/bench, and <name>_peer; dropped and recreated), else
# SQLite. Shorter: BENCH_REQUESTS=60 BENCH_ADMIN_ROWS=10000 (bench/run.py: the knobs).
bench: $(VENV)/.installed-bench $(BENCH_PEER)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) docs/_build .tox .ci/.tox-venv build dist *.egg-info testproject/*.sqlite3*
