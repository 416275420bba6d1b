//! Looking inside the network: why it answered (class-activation maps), what it sees
//! (feature-map grids), what a class means to it (dreams) and how it can be fooled (attacks).
//!
//! Owns the computations behind `teachcam explain`, `features`, `dream` and `attack`; the
//! app reads and writes the files. [`explain`] works on any precision's feature map and is
//! cheap enough per frame; the others need input gradients, so they run on the float network
//! of [`crate::grad`].
//! Must not: read or write files, print, or parse arguments.

pub mod attack;
pub mod dream;
pub mod explain;
pub mod objective;
pub mod render;

#[cfg(test)]
mod tests;
