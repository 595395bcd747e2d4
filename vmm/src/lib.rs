//! husk VMM library.
