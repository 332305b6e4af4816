cargo run --release -- serve --log stderr   # run the service on its embedded default (SQLite)
tests/run                                   # run the whole test suite (installs its Debian and PyPI packages when missing)
