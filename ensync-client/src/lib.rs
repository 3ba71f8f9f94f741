//! # ensync-client: the runtime-neutral EnSync client
//!
//! The API layer and the driver loop shared by the EnSync adapters (`ensync-tokio`,
//! `ensync-h2`, and through it `ensync-blocking`): [`Client`], [`Subscription`],
//! [`Event`], [`EnSyncError`], the option types, and [`driver::start`], which drives the
//! sans-IO core [`ensync_proto::session`] over any [`Transport`] on any [`Executor`].
//! It uses only `futures` channels and `async-lock` primitives: no runtime, no IO.
//!
//! Applications use an adapter crate, which re-exports these types; adapters implement
//! [`Transport`] (connect, unary calls, subscribe streams) and provide an [`Executor`]
//! (spawn, sleep).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod driver;
mod engine;
mod error;
mod event;
mod options;
mod runtime;
mod state;
mod subscription;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{Client, ConnectionState};
pub use driver::{EventStream, StreamItem, Transport};
pub use engine::GrpcEngineCore;
pub use error::{EnSyncError, ErrorKind, Result};
pub use event::Event;
pub use options::{ClientOptions, EngineOptions, PublishOptions, RpcGeneration, SubscribeOptions};
pub use runtime::{Executor, Sleep, Spawn};
pub use subscription::{HandlerResult, Subscription};

/// The sans-IO core, re-exported for keys and advanced use.
pub use ensync_proto;
