//! End-to-end tests of ringfence: see `tests/tests/`.
