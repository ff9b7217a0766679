//! Cross-crate integration tests live in this package's `tests/` folder (oracle plus
//! many native scouts, faults, load). The library itself is empty; it only gives the
//! tests a package to belong to.
