//! The editing methods, one module each, built from `pipeline::stages`.

pub mod mirror;
