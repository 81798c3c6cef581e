//! The SSE wire format: how herald turns events into bytes (`frame`).
pub mod frame;
