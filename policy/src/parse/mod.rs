//! Parsers from user-facing text to the model: the CLI rule syntax (`cli`) and the JSON/TOML
//! document (`document`). They only build and validate; they never evaluate.

pub mod cli;
pub mod document;
pub mod tls_section;
