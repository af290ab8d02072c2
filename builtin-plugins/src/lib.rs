//! Placeholder: this crate is filled in by a later issue (see ARCHITECTURE.md).
