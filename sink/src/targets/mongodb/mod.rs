//! MongoDB target: `customers`, `addresses`, `orders` with `items` embedded.

mod config;
mod service;
mod sink;

pub use config::MongoConfig;
pub use service::{is_retriable, is_retriable_code};
pub use sink::{MongoSink, collection_name};
