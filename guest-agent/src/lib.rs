//! husk agent wire protocol.
