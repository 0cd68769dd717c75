//! End-to-end tests live in this crate's `tests/` folder, one file per user story.
