//! One adapter per engine, each implementing [`crate::engine::BenchEngine`]
//! in the engine's durable default configuration.

pub mod fjall;
pub mod lmdb;
pub mod mmsb;
pub mod redb;
pub mod sqlite;

/// Name of the one table (or keyspace, or named database) every engine uses.
pub const TABLE: &str = "kv";
