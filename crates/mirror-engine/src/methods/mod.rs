//! The editing methods, one module each, built from `pipeline::stages`.

pub mod ddim;
pub mod mirror;
pub mod pix2pix_zero;
