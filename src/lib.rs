//! teachcam: teach a camera on a small board to recognise things, offline.
//!
//! Module map (the full table, with what each module may depend on, is in
//! `docs/ARCHITECTURE.md`; `tests/architecture.rs` enforces it):
//!
//! | module | owns |
//! |---|---|
//! | [`app`], [`cli`] | composition root and command-line grammar |
//! | [`daemon`] | the shell of `teachcam run`: threads, signals, clock, observer API |
//! | [`session`] | the appliance's policy as a pure state machine (`step(now, input)`) |
//! | [`camera`], [`gpio`] | frame sources, buttons, indicators (traits + fakes), debouncer |
//! | [`store`] | crash-safe store of captured samples, classes and heads |
//! | [`head`] | linear softmax head: predict, train, file format |
//! | [`inspect`] | explain (class-activation map), feature grids, dream, attack |
//! | [`grad`] | differentiable float backbone: forward with a tape, input gradients |
//! | [`backbone`] | tract model: find, verify, load once, embed |
//! | [`qnn`] | int8 kernels as tract custom ops, and the graph rewrite that uses them |
//! | [`preprocess`] | frame → model input, one pass |
//! | [`dataset`], [`doctor`], [`config`] | export/import, machine checks, the checked run configuration |
//! | [`imagefolder`], [`embcache`] | datasets on disk, embedding caches |
//! | [`decode`] | bounded image decoding (pixel limit, truncation) |
//! | [`embedding`] | what a usable embedding is (finite, right length, plausible norm) |
//! | [`inbox`] | the ring of frames the appliance was unsure of, to label or dismiss |
//! | [`tarball`] | the bounded, validating tar reader behind `dataset import` |
//! | [`metrics`] | accuracy, confusion, latency summaries |
//! | [`demo`] | synthetic scenes for demos and tests |
//! | [`augment`] | image variations of a captured frame for training |
//! | [`linalg`] | dot/axpy kernels with CPU-feature dispatch |
//! | [`mqtt`] | MQTT and Home Assistant: config, topics, payloads, the link threads |
//! | [`bus`] | bounded per-subscriber event queues, newest-only slots |
//! | [`frame`] | frames, JPEG, thumbnails, class-name rules |
//! | [`framed`], [`fsutil`], [`rng`] | file container, atomic writes, seeded randomness |

#![warn(missing_docs)]

pub mod app;
pub mod augment;
pub mod backbone;
pub mod bus;
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
pub mod frame;
pub mod framed;
pub mod fsutil;
pub mod gpio;
pub mod grad;
pub mod head;
pub mod imagefolder;
pub mod inbox;
pub mod inspect;
pub mod linalg;
pub mod metrics;
pub mod mqtt;
pub mod preprocess;
pub mod qnn;
pub mod rng;
pub mod session;
pub mod store;
pub mod tarball;
#[cfg(feature = "web")]
pub mod web;
