# The two commands of the README. Both set everything up themselves (scripts/setup.sh).
.PHONY: setup reproduce test
setup:
	@bash scripts/setup.sh

reproduce: setup
	.venv/bin/singledir reproduce --preset quick --out reports/quick

test: setup
	.venv/bin/python -m pytest -q -n 2
