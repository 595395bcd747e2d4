//! Shared helpers for the example functions.
