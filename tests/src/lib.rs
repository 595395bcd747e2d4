//! husk test harness library.
