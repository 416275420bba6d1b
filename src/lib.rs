//! teachcam: teach a camera on a small board to recognise things, offline.
//!
//! Module map (dependencies point down the list, never up):
//!
//! | module | owns |
//! |---|---|
//! | [`app`], [`cli`] | composition root and command-line grammar |
//! | [`daemon`] | the appliance loop (`teachcam run`) and its pure controller |
//! | [`camera`], [`gpio`] | frame sources, buttons, indicators (traits + fakes), debouncer |
//! | [`store`] | crash-safe store of captured samples and heads |
//! | [`head`] | linear softmax head: predict, train, file format |
//! | [`backbone`] | tract model: find, verify, load once, embed |
//! | [`qnn`] | int8 kernels as tract custom ops, and the graph rewrite that uses them |
//! | [`preprocess`] | frame → model input, one pass |
//! | [`imagefolder`], [`embcache`] | datasets on disk, embedding caches |
//! | [`decode`] | bounded image decoding (pixel limit, truncation) |
//! | [`embedding`] | what a usable embedding is (finite, right length, plausible norm) |
//! | [`tarball`] | the bounded, validating tar reader behind `dataset import` |
//! | [`metrics`] | accuracy, confusion, latency summaries |
//! | [`demo`] | synthetic scenes for demos and tests |
//! | [`linalg`] | dot/axpy kernels with CPU-feature dispatch |
//! | [`framed`], [`fsutil`], [`rng`] | file container, atomic writes, seeded randomness |

#![warn(missing_docs)]

pub mod app;
pub mod backbone;
pub mod camera;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod embcache;
pub mod embedding;
pub mod framed;
pub mod fsutil;
pub mod gpio;
pub mod head;
pub mod imagefolder;
pub mod linalg;
pub mod metrics;
pub mod preprocess;
pub mod qnn;
pub mod rng;
pub mod store;
pub mod tarball;
